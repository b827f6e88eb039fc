//! The codecs: gzip, zstd, bzip2 and xz, recognised by their magic bytes, read and
//! written as `std::io` streams, and a reader that refuses to expand past its limits.

use std::io::{self, Read, Write};

/// A compression format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    #[serde(alias = "gz")]
    Gzip,
    #[serde(alias = "zst")]
    Zstd,
    #[serde(alias = "bz2")]
    Bzip2,
    Xz,
}

impl Codec {
    /// The codec whose magic bytes start `head`.
    pub fn detect(head: &[u8]) -> Option<Self> {
        if head.starts_with(&[0x1f, 0x8b]) {
            Some(Codec::Gzip)
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Codec::Zstd)
        } else if head.starts_with(b"BZh") {
            Some(Codec::Bzip2)
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Some(Codec::Xz)
        } else {
            None
        }
    }

    pub fn ext(self) -> &'static str {
        match self {
            Codec::Gzip => "gz",
            Codec::Zstd => "zst",
            Codec::Bzip2 => "bz2",
            Codec::Xz => "xz",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Codec::Gzip => "application/gzip",
            Codec::Zstd => "application/zstd",
            Codec::Bzip2 => "application/x-bzip2",
            Codec::Xz => "application/x-xz",
        }
    }

    /// A reader of the decompressed bytes. Concatenated members (`cat a.gz b.gz`)
    /// read as one stream, as `gzip -d` reads them.
    pub fn decoder<'a>(self, input: impl Read + Send + 'a) -> io::Result<Box<dyn Read + Send + 'a>> {
        Ok(match self {
            Codec::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
            Codec::Zstd => Box::new(zstd::stream::read::Decoder::new(input)?),
            Codec::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(input)),
            Codec::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(input)),
        })
    }

    /// Compresses everything `input` holds into `output` at `level` (the codec's own
    /// scale; None for its default).
    pub fn encode(self, input: &mut impl Read, output: impl Write, level: Option<u32>) -> io::Result<u64> {
        match self {
            Codec::Gzip => {
                let level = flate2::Compression::new(level.unwrap_or(6).min(9));
                let mut encoder = flate2::write::GzEncoder::new(output, level);
                let n = io::copy(input, &mut encoder)?;
                encoder.finish()?;
                Ok(n)
            }
            Codec::Zstd => {
                let mut encoder = zstd::stream::write::Encoder::new(output, level.unwrap_or(3).min(22) as i32)?;
                let n = io::copy(input, &mut encoder)?;
                encoder.finish()?;
                Ok(n)
            }
            Codec::Bzip2 => {
                let level = bzip2::Compression::new(level.unwrap_or(9).clamp(1, 9));
                let mut encoder = bzip2::write::BzEncoder::new(output, level);
                let n = io::copy(input, &mut encoder)?;
                encoder.finish()?;
                Ok(n)
            }
            Codec::Xz => {
                let mut encoder = liblzma::write::XzEncoder::new(output, level.unwrap_or(6).min(9));
                let n = io::copy(input, &mut encoder)?;
                encoder.finish()?;
                Ok(n)
            }
        }
    }
}

/// Limits on what a compressed input may expand to.
#[derive(Debug, Clone, Copy)]
pub struct Expansion {
    /// The most bytes it may decompress to.
    pub max_bytes: u64,
    /// The most output bytes per input byte, checked once the output passes
    /// [`RATIO_GRACE`] (small files of zeros compress well and are no threat).
    pub max_ratio: u64,
}

/// Output below this size is never refused for its ratio.
pub const RATIO_GRACE: u64 = 16 << 20;

/// Counts the bytes read through it (the compressed side).
pub struct Counted<R> {
    inner: R,
    count: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<R> Counted<R> {
    pub fn new(inner: R) -> (Self, std::sync::Arc<std::sync::atomic::AtomicU64>) {
        let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        (Self { inner, count: count.clone() }, count)
    }
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

/// The decompressed side: fails as soon as the output passes the limits, so a bomb
/// costs the bytes up to the limit, never the bytes it claims.
pub struct Bounded<R> {
    inner: R,
    read: u64,
    compressed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    limits: Expansion,
    /// Names the input in the error.
    name: String,
}

impl<R: Read> Bounded<R> {
    pub fn new(
        inner: R,
        compressed: std::sync::Arc<std::sync::atomic::AtomicU64>,
        limits: Expansion,
        name: &str,
    ) -> Self {
        Self { inner, read: 0, compressed, limits, name: name.to_string() }
    }
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.limits.max_bytes {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} decompresses to more than {} bytes (max_output_bytes)", self.name, self.limits.max_bytes),
            ));
        }
        let compressed = self.compressed.load(std::sync::atomic::Ordering::Relaxed).max(1);
        if self.read > RATIO_GRACE && self.read / compressed > self.limits.max_ratio {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} expands more than {}:1 ({} bytes from {compressed}; max_ratio)",
                    self.name, self.limits.max_ratio, self.read
                ),
            ));
        }
        Ok(n)
    }
}

/// Decompresses `input` within `limits`: the codec given, or the one its magic bytes
/// name (`None` when `auto` finds none: the input is passed through as it is).
pub fn open<'a>(
    input: impl Read + Send + 'a,
    codec: Option<Codec>,
    limits: Expansion,
    name: &str,
) -> io::Result<(Box<dyn Read + Send + 'a>, Option<Codec>)> {
    let mut input = io::BufReader::with_capacity(64 << 10, input);
    let head = io::BufRead::fill_buf(&mut input)?;
    let codec = codec.or_else(|| Codec::detect(head));
    let Some(codec) = codec else { return Ok((Box::new(input), None)) };
    let (counted, compressed) = Counted::new(input);
    let decoder = codec.decoder(counted)?;
    Ok((Box::new(Bounded::new(decoder, compressed, limits, name)), Some(codec)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(codec: Codec) {
        let text = b"year,month\n2013,1\n".repeat(1000);
        let mut packed = Vec::new();
        codec.encode(&mut text.as_slice(), &mut packed, None).unwrap();
        assert_eq!(Codec::detect(&packed), Some(codec));
        let limits = Expansion { max_bytes: 1 << 20, max_ratio: 100 };
        let (mut reader, found) = open(packed.as_slice(), None, limits, "t").unwrap();
        let mut back = Vec::new();
        reader.read_to_end(&mut back).unwrap();
        assert_eq!((back, found), (text, Some(codec)));
    }

    #[test]
    fn every_codec_round_trips_and_is_recognised() {
        for codec in [Codec::Gzip, Codec::Zstd, Codec::Bzip2, Codec::Xz] {
            roundtrip(codec);
        }
    }

    #[test]
    fn a_bomb_stops_at_its_limits() {
        let mut packed = Vec::new();
        Codec::Gzip.encode(&mut io::repeat(0).take(64 << 20), &mut packed, Some(9)).unwrap();
        let by_size = Expansion { max_bytes: 1 << 20, max_ratio: u64::MAX };
        let (mut reader, _) = open(packed.as_slice(), None, by_size, "bomb.gz").unwrap();
        let err = io::copy(&mut reader, &mut io::sink()).unwrap_err();
        assert!(err.to_string().contains("bomb.gz decompresses to more than 1048576 bytes"), "{err}");
        let by_ratio = Expansion { max_bytes: u64::MAX, max_ratio: 100 };
        let (mut reader, _) = open(packed.as_slice(), None, by_ratio, "bomb.gz").unwrap();
        let err = io::copy(&mut reader, &mut io::sink()).unwrap_err();
        assert!(err.to_string().contains("expands more than 100:1"), "{err}");
    }

    #[test]
    fn a_truncated_stream_is_an_error_not_a_short_file() {
        let mut packed = Vec::new();
        Codec::Gzip.encode(&mut b"hello world ".repeat(100).as_slice(), &mut packed, None).unwrap();
        let cut = &packed[..packed.len() / 2];
        let limits = Expansion { max_bytes: u64::MAX, max_ratio: u64::MAX };
        let (mut reader, _) = open(cut, None, limits, "t.gz").unwrap();
        assert!(io::copy(&mut reader, &mut io::sink()).is_err());
    }
}
