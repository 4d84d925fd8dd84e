//! Durations written as humantime strings: `"500ms"`, `"2s"`, `"1h30m"`.

use std::time::Duration;

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DurationError {
    /// A bare number: the unit is ambiguous, so we refuse to guess.
    #[error("has no unit")]
    NoUnit,
    /// Anything humantime could not read.
    #[error("{0}")]
    Invalid(String),
}

/// Parses a duration string, insisting on a unit (except for a bare `0`).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let trimmed = s.trim();
    // "0" needs no unit: zero seconds and zero hours are the same thing.
    if trimmed != "0" && !trimmed.is_empty() && trimmed.parse::<f64>().is_ok() {
        return Err(DurationError::NoUnit);
    }
    humantime::parse_duration(trimmed).map_err(|e| DurationError::Invalid(e.to_string()))
}

/// Formats a duration the way `parse_duration` reads it back (`"1h 30m"`).
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Serde adapter: a [`Duration`] as a humantime string.
pub(crate) mod serde_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `d` as a humantime string such as `"10s"`.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    /// Reads a humantime string such as `"10s"` or `"1h 30m"`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
    }
}

/// Serde adapter: an optional [`Duration`] as a humantime string or null.
pub(crate) mod serde_opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `d` as a humantime string, or null.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&super::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    /// Reads a humantime string or null.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| {
                super::parse_duration(&s)
                    .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_units_and_combinations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration(" 1h 30m "), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_bare_numbers_and_garbage() {
        assert_eq!(parse_duration("2"), Err(DurationError::NoUnit));
        assert_eq!(parse_duration("1.5"), Err(DurationError::NoUnit));
        assert!(matches!(
            parse_duration("fast"),
            Err(DurationError::Invalid(_))
        ));
        assert!(matches!(parse_duration(""), Err(DurationError::Invalid(_))));
        assert!(matches!(
            parse_duration("-1s"),
            Err(DurationError::Invalid(_))
        ));
    }

    #[test]
    fn formatting_round_trips() {
        for d in [0, 1, 500, 2_000, 90_000, 5_400_000] {
            let d = Duration::from_millis(d);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }
}
