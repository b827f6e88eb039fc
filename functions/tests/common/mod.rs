//! Hand-built PNG files for the image tests: headers that lie, palettes.
#![allow(dead_code)]

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// Appends a PNG chunk with its length and CRC.
pub fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// A zlib stream holding `raw` in one stored (uncompressed) block.
pub fn zlib_stored(raw: &[u8]) -> Vec<u8> {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in raw {
        a = (a + x as u32) % 65521;
        b = (b + a) % 65521;
    }
    let len = raw.len() as u16;
    let mut out = vec![0x78, 0x01, 0x01];
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(raw);
    out.extend_from_slice(&((b << 16) | a).to_be_bytes());
    out
}

/// A tiny PNG whose header claims `width` × `height` 8-bit RGB pixels: a
/// decompression bomb's calling card.
pub fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let ihdr: Vec<u8> =
        [width.to_be_bytes(), height.to_be_bytes()].concat().into_iter().chain([8, 2, 0, 0, 0]).collect();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &zlib_stored(&[0; 4]));
    chunk(&mut out, b"IEND", &[]);
    out
}

/// A 4×4 palette PNG whose every pixel is palette entry 1 = rgb(10, 200, 30).
pub fn palette_png() -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &[0, 0, 0, 4, 0, 0, 0, 4, 8, 3, 0, 0, 0]);
    chunk(&mut out, b"PLTE", &[0, 0, 0, 10, 200, 30]);
    let raw: Vec<u8> = (0..4).flat_map(|_| [0u8, 1, 1, 1, 1]).collect();
    chunk(&mut out, b"IDAT", &zlib_stored(&raw));
    chunk(&mut out, b"IEND", &[]);
    out
}
