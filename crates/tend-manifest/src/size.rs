//! Memory sizes written with a unit: `"256MiB"`, `"1GiB"`, `"512MB"`.

/// Why a size string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SizeError {
    /// No number at the start.
    #[error("does not start with a number")]
    NoNumber,
    /// A bare number: bytes or megabytes? We refuse to guess.
    #[error("has no unit")]
    NoUnit,
    /// `256m` and friends: Docker reads mebibytes, Kubernetes reads millibytes.
    #[error("has an ambiguous unit `{0}`")]
    Ambiguous(String),
    /// A unit we do not know.
    #[error("has an unknown unit `{0}`")]
    UnknownUnit(String),
    /// More than `u64::MAX` bytes.
    #[error("is too large")]
    TooLarge,
}

/// Units accepted, matched case-insensitively, with their multiplier in bytes.
const UNITS: &[(&str, u64)] = &[
    ("b", 1),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
    ("ki", 1 << 10),
    ("mi", 1 << 20),
    ("gi", 1 << 30),
    ("ti", 1 << 40),
];

/// Parses a size with a unit into bytes.
pub(crate) fn parse_size(s: &str) -> Result<u64, SizeError> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number = number.replace('_', "");
    let unit = unit.trim();
    if number.is_empty() {
        return Err(SizeError::NoNumber);
    }
    if unit.is_empty() {
        return Err(SizeError::NoUnit);
    }
    let lower = unit.to_ascii_lowercase();
    let multiplier = match UNITS.iter().find(|(u, _)| *u == lower) {
        Some((_, m)) => *m,
        None if matches!(lower.as_str(), "k" | "m" | "g" | "t") => {
            return Err(SizeError::Ambiguous(unit.to_string()))
        }
        None => return Err(SizeError::UnknownUnit(unit.to_string())),
    };
    if number.contains('.') {
        let value: f64 = number.parse().map_err(|_| SizeError::NoNumber)?;
        let bytes = value * multiplier as f64;
        // u64::MAX as f64 rounds up to 2^64, so `>=` keeps the cast in range.
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(SizeError::TooLarge);
        }
        Ok(bytes.round() as u64)
    } else {
        let value: u64 = number.parse().map_err(|_| SizeError::TooLarge)?;
        value.checked_mul(multiplier).ok_or(SizeError::TooLarge)
    }
}

/// Suggests a fix for an ambiguous single-letter unit (`256m` → `256MiB`).
pub(crate) fn suggest_binary_unit(s: &str) -> Option<String> {
    let s = s.trim();
    let last = s.chars().last()?;
    let prefix = &s[..s.len() - last.len_utf8()];
    matches!(last.to_ascii_lowercase(), 'k' | 'm' | 'g' | 't')
        .then(|| format!("{}{}iB", prefix.trim_end(), last.to_ascii_uppercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_binary_and_decimal_units() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("512MB"), Ok(512_000_000));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("64 Mi"), Ok(64 << 20));
        assert_eq!(parse_size("100b"), Ok(100));
        assert_eq!(parse_size("1_024KiB"), Ok(1 << 20));
    }

    #[test]
    fn rejects_what_it_cannot_read_unambiguously() {
        assert_eq!(parse_size("1024"), Err(SizeError::NoUnit));
        assert_eq!(parse_size("256m"), Err(SizeError::Ambiguous("m".into())));
        assert_eq!(
            parse_size("2 parsecs"),
            Err(SizeError::UnknownUnit("parsecs".into()))
        );
        assert_eq!(parse_size("MiB"), Err(SizeError::NoNumber));
        assert_eq!(parse_size("1.2.3MiB"), Err(SizeError::NoNumber));
        assert_eq!(parse_size("99999999999TiB"), Err(SizeError::TooLarge));
        assert_eq!(
            parse_size("1e300TiB"),
            Err(SizeError::UnknownUnit("e300TiB".into()))
        );
    }

    #[test]
    fn suggests_binary_units() {
        assert_eq!(suggest_binary_unit("256m"), Some("256MiB".into()));
        assert_eq!(suggest_binary_unit("1 G"), Some("1GiB".into()));
        assert_eq!(suggest_binary_unit("256MiB"), None);
    }
}
