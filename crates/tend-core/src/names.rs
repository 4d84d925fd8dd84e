//! Validated names: services, teams and tokens are DNS labels.
//!
//! A service name ends up in a host name (`<service>.localhost`), a Kubernetes
//! object name and a file path, so all names obey RFC 1123 label rules:
//! 1 to 63 characters, lowercase ASCII letters, digits and `-`, starting with a
//! letter and not ending with `-`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest DNS label allowed by RFC 1123.
pub const MAX_LABEL_LEN: usize = 63;

/// Why a string is not a valid DNS label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The string is empty.
    #[error("must not be empty")]
    Empty,
    /// The string is longer than 63 characters.
    #[error("is {len} characters long; at most {MAX_LABEL_LEN} are allowed")]
    TooLong {
        /// Length of the rejected string.
        len: usize,
    },
    /// The string starts with something other than a lowercase letter.
    #[error("must start with a lowercase letter (a-z)")]
    BadStart,
    /// The string ends with a hyphen.
    #[error("must not end with `-`")]
    BadEnd,
    /// The string contains a character outside `a-z`, `0-9` and `-`.
    #[error("contains {found:?}; only lowercase letters, digits and `-` are allowed")]
    BadChar {
        /// The first offending character.
        found: char,
    },
}

/// Checks that `s` is an RFC 1123 DNS label starting with a letter.
pub fn validate_dns_label(s: &str) -> Result<(), NameError> {
    let first = s.chars().next().ok_or(NameError::Empty)?;
    if s.len() > MAX_LABEL_LEN {
        return Err(NameError::TooLong { len: s.len() });
    }
    if let Some(found) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(NameError::BadChar { found });
    }
    if !first.is_ascii_lowercase() {
        return Err(NameError::BadStart);
    }
    if s.ends_with('-') {
        return Err(NameError::BadEnd);
    }
    Ok(())
}

/// Suggests a valid label close to `s` (lowercased, invalid characters replaced).
pub fn suggest_dns_label(s: &str) -> Option<String> {
    let mut out: String = s
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    while out.contains("--") {
        out = out.replace("--", "-");
    }
    let out = out
        .trim_start_matches(|c: char| !c.is_ascii_lowercase())
        .trim_end_matches('-');
    let out: String = out.chars().take(MAX_LABEL_LEN).collect();
    let out = out.trim_end_matches('-').to_string();
    (validate_dns_label(&out).is_ok() && out != s).then_some(out)
}

macro_rules! label_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates `s` and wraps it.
            pub fn parse(s: &str) -> Result<Self, NameError> {
                validate_dns_label(s)?;
                Ok(Self(s.to_string()))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(|e| {
                    serde::de::Error::custom(format!("invalid name {s:?}: {e}"))
                })
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .pattern(Some("^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"))
                    .max_length(Some(MAX_LABEL_LEN))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

label_type!(
    /// The name of a service: a DNS label, unique on the platform.
    ServiceName
);
label_type!(
    /// The name of a team: a DNS label, unique on the platform.
    TeamName
);
label_type!(
    /// The human name of a token (`alice`, `ci-payments`): a DNS label.
    TokenName
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "checkout", "web-2", "a1", &"x".repeat(63)] {
            assert_eq!(validate_dns_label(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rejects_bad_labels_with_reason() {
        assert_eq!(validate_dns_label(""), Err(NameError::Empty));
        assert_eq!(validate_dns_label("1abc"), Err(NameError::BadStart));
        assert_eq!(validate_dns_label("-abc"), Err(NameError::BadStart));
        assert_eq!(validate_dns_label("abc-"), Err(NameError::BadEnd));
        assert_eq!(
            validate_dns_label("Check_out"),
            Err(NameError::BadChar { found: 'C' })
        );
        assert_eq!(
            validate_dns_label(&"x".repeat(64)),
            Err(NameError::TooLong { len: 64 })
        );
    }

    #[test]
    fn suggests_a_valid_label() {
        assert_eq!(suggest_dns_label("Check_Out"), Some("check-out".into()));
        assert_eq!(suggest_dns_label("my service!"), Some("my-service".into()));
        assert_eq!(suggest_dns_label("ok"), None);
        assert_eq!(suggest_dns_label("123"), None);
    }

    #[test]
    fn serde_rejects_invalid_names() {
        let err = serde_json::from_str::<ServiceName>("\"Bad Name\"").unwrap_err();
        assert!(err.to_string().contains("invalid name"), "{err}");
        let ok: TeamName = serde_json::from_str("\"payments\"").unwrap();
        assert_eq!(ok.as_str(), "payments");
    }
}
