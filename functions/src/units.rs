//! Sizes in pipeline files (`"64MiB"`), shared by the engine's limits and function
//! parameters so both read them alike.

use serde::{de, Deserialize, Deserializer};

/// A size written as `"64MiB"`, `"10 MB"` or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) if n > 0 => Ok(ByteSize(n as u64)),
            Raw::Number(n) => Err(de::Error::custom(format!("size must be positive, got {n}"))),
            Raw::Text(text) => text.parse().map_err(de::Error::custom),
        }
    }
}

/// The same spellings on a command line or in an environment variable.
impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim().parse::<bytesize::ByteSize>() {
            Ok(size) if size.as_u64() > 0 => Ok(ByteSize(size.as_u64())),
            Ok(_) => Err("size must be positive".into()),
            Err(e) => Err(format!("invalid size {text:?}: {e} (examples: \"64MiB\", \"512KiB\", \"1GB\")")),
        }
    }
}
