//! Durations written the way operators write them: `500ms`, `2s`, `1.5s`, `1m`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration that reads and prints as `<number><unit>` with unit `ms`, `s`,
/// `m` or `h` (the number may have a fraction). Used for every time setting so
/// the config file, the CLI and the CRD accept the same spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(Duration);

/// Why a duration string did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: expected a number followed by ms, s, m or h (e.g. 500ms, 2s, 1.5s, 1m)")]
pub struct ParseDurationError {
    input: String,
}

/// Pattern that the CRD schema enforces; mirrors [`HumanDuration::from_str`].
pub const DURATION_PATTERN: &str = r"^[0-9]+(\.[0-9]+)?(ms|s|m|h)$";

impl HumanDuration {
    pub const fn from_millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }

    pub const fn from_secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }

    pub const fn get(self) -> Duration {
        self.0
    }

    /// The duration in units of the 90 kHz MPEG clock.
    pub fn as_90khz(self) -> u64 {
        (self.0.as_nanos() * 9 / 100_000) as u64
    }
}

impl From<Duration> for HumanDuration {
    fn from(d: Duration) -> Self {
        Self(d)
    }
}

impl FromStr for HumanDuration {
    type Err = ParseDurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseDurationError {
            input: s.to_string(),
        };
        let trimmed = s.trim();
        let split = trimmed
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        let (number, unit) = trimmed.split_at(split);
        let nanos_per_unit: f64 = match unit {
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(err()),
        };
        if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
            return Err(err());
        }
        let value: f64 = number.parse().map_err(|_| err())?;
        let nanos = value * nanos_per_unit;
        if !nanos.is_finite() || nanos > u64::MAX as f64 {
            return Err(err());
        }
        Ok(Self(Duration::from_nanos(nanos.round() as u64)))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        let sub_ms = !self.0.as_nanos().is_multiple_of(1_000_000);
        if sub_ms {
            write!(f, "{}s", self.0.as_secs_f64())
        } else if ms.is_multiple_of(3_600_000) && ms != 0 {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) && ms != 0 {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for HumanDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "HumanDuration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "description": "A duration: a number followed by ms, s, m or h (e.g. 500ms, 2s, 1.5s, 1m)."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit() {
        assert_eq!("500ms".parse(), Ok(HumanDuration::from_millis(500)));
        assert_eq!("2s".parse(), Ok(HumanDuration::from_secs(2)));
        assert_eq!("1.5s".parse(), Ok(HumanDuration::from_millis(1500)));
        assert_eq!("1m".parse(), Ok(HumanDuration::from_secs(60)));
        assert_eq!("1h".parse(), Ok(HumanDuration::from_secs(3600)));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "", "5", "s", "-1s", "1.s", ".5s", "1x", "1 s", "1e3s", "1sec",
        ] {
            assert!(bad.parse::<HumanDuration>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn display_round_trips() {
        for text in ["500ms", "2s", "1m", "1h", "1.5s", "90s"] {
            let d: HumanDuration = text.parse().unwrap();
            let again: HumanDuration = d.to_string().parse().unwrap();
            assert_eq!(d, again, "{text}");
        }
        assert_eq!(HumanDuration::from_millis(1500).to_string(), "1500ms");
        assert_eq!(HumanDuration::from_secs(120).to_string(), "2m");
    }

    #[test]
    fn converts_to_mpeg_clock() {
        assert_eq!(HumanDuration::from_secs(5).as_90khz(), 450_000);
        assert_eq!(HumanDuration::from_millis(1).as_90khz(), 90);
    }
}
