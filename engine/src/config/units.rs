//! Human-readable durations (`"30s"`), sizes (`"64MiB"`) and backoff ranges
//! (`"200ms..10s"`) in pipeline files.

use std::time::Duration;

use serde::{de, Deserialize, Deserializer};

/// A duration written as `"30s"`, `"1h 30m"`, `"250ms"` (humantime syntax).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map(HumanDuration).map_err(de::Error::custom)
    }
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration {text:?}: {e} (examples: \"500ms\", \"30s\", \"1h 30m\")"))
}

/// Sizes are read the same way by pipeline limits and function parameters.
pub use weir_functions::units::ByteSize;

/// Exponential backoff bounds: the first retry waits about `min`, each next one
/// doubles, never above `max`. Written `"200ms..10s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { min: Duration::from_millis(200), max: Duration::from_secs(10) }
    }
}

impl<'de> Deserialize<'de> for Backoff {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let (min, max) = text.split_once("..").ok_or_else(|| {
            de::Error::custom(format!("invalid backoff {text:?}: expected \"MIN..MAX\", e.g. \"200ms..10s\""))
        })?;
        let min = parse_duration(min).map_err(de::Error::custom)?;
        let max = parse_duration(max).map_err(de::Error::custom)?;
        if min.is_zero() || min > max {
            return Err(de::Error::custom(format!("invalid backoff {text:?}: MIN must be positive and not above MAX")));
        }
        Ok(Backoff { min, max })
    }
}

impl Backoff {
    /// The wait before retry number `retry` (1 = first retry): exponential, capped, with
    /// jitter over the top quarter so synchronized failures spread out while each wait
    /// still grows (below the cap).
    pub fn delay(&self, retry: u32, jitter: f64) -> Duration {
        let exp = self.min.saturating_mul(1u32 << retry.saturating_sub(1).min(20));
        let capped = exp.min(self.max);
        capped.mul_f64(0.75 + 0.25 * jitter.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let b = Backoff { min: Duration::from_millis(100), max: Duration::from_secs(1) };
        assert_eq!(b.delay(1, 1.0), Duration::from_millis(100));
        assert_eq!(b.delay(2, 1.0), Duration::from_millis(200));
        assert_eq!(b.delay(3, 1.0), Duration::from_millis(400));
        assert_eq!(b.delay(10, 1.0), Duration::from_secs(1));
        assert_eq!(b.delay(2, 0.0), Duration::from_millis(150));
    }

    #[test]
    fn sizes_and_durations_parse() {
        #[derive(Deserialize)]
        struct T {
            s: ByteSize,
            d: HumanDuration,
            b: Backoff,
        }
        let t: T = toml::from_str("s = \"64MiB\"\nd = \"1m 30s\"\nb = \"1s..1m\"").unwrap();
        assert_eq!(t.s.0, 64 << 20);
        assert_eq!(t.d.0, Duration::from_secs(90));
        assert_eq!(t.b.max, Duration::from_secs(60));
        assert!(toml::from_str::<T>("s = -1\nd = \"1s\"\nb = \"1s..2s\"").is_err());
        assert!(toml::from_str::<T>("s = 1\nd = \"soon\"\nb = \"1s..2s\"").is_err());
        assert!(toml::from_str::<T>("s = 1\nd = \"1s\"\nb = \"2s..1s\"").is_err());
    }
}
