//! Text-level helpers: type names for messages, table headers, identifiers, hosts.

use std::ops::Range;

use toml_edit::{Item, Value};

use crate::diagnostic::show;

/// "a string", "an integer", ...: the type of `item`, for messages.
pub(super) fn kind(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Value(v) => value_kind(v),
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "a list of tables",
    }
}

/// The type of `value`, for messages.
pub(super) fn value_kind(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::InlineTable(_) => "a table",
    }
}

/// The `[header]` part of a table's span (which covers the body too).
///
/// Scans from the opening bracket to the matching closing one(s), skipping
/// quoted keys, so `[service]  # comment` underlines only `[service]`.
pub(super) fn header_span(src: &str, span: Range<usize>) -> Option<Range<usize>> {
    let start = span.start;
    let text = src.get(start..span.end.min(src.len()))?;
    if !text.starts_with('[') {
        return None;
    }
    let array = text.starts_with("[[");
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if q == '"' && c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '\n' | '\r' => return Some(start..start + i),
            ']' => {
                let mut end = i + 1;
                if array && text[end..].starts_with(']') {
                    end += 1;
                }
                return Some(start..start + end);
            }
            _ => {}
        }
    }
    Some(start..start + text.len())
}

/// `[A-Za-z_][A-Za-z0-9_]*`: environment variable and label names.
pub(super) fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `log-level` → `log_level`: a valid identifier close to `s`, if any.
pub(super) fn suggest_identifier(s: &str) -> Option<String> {
    let mut fixed: String = s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if fixed.starts_with(|c: char| c.is_ascii_digit()) {
        fixed.insert(0, '_');
    }
    (is_identifier(&fixed) && fixed != s && fixed.chars().any(|c| c != '_')).then_some(fixed)
}

/// Why `host` is not a lowercase DNS host name, if it is not.
pub(super) fn host_error(host: &str) -> Option<String> {
    if host.contains("://") {
        return Some("is a URL, not a host name".into());
    }
    if host.contains(':') {
        return Some("has a port; the router matches the host name only".into());
    }
    if host.len() > 253 {
        return Some(format!(
            "is {} characters long; at most 253 are allowed",
            host.len()
        ));
    }
    if host.ends_with('.') {
        return Some("ends with `.`".into());
    }
    if host.chars().any(|c| c.is_ascii_uppercase()) {
        return Some("has uppercase letters".into());
    }
    for label in host.split('.') {
        if label.is_empty() {
            return Some("has an empty label (`..` or a leading `.`)".into());
        }
        if label.len() > 63 {
            return Some(format!(
                "label `{}` is longer than 63 characters",
                show(label)
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Some(format!(
                "contains {c:?}; only lowercase letters, digits, `-` and `.` are allowed"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some(format!("label `{}` starts or ends with `-`", show(label)));
        }
    }
    None
}

/// A valid host close to `host`: lowercased, without scheme, port, path or trailing dot.
pub(super) fn suggest_host(host: &str) -> Option<String> {
    let mut h = host.trim().to_ascii_lowercase();
    if let Some(i) = h.find("://") {
        h = h[i + 3..].to_string();
    }
    if let Some(i) = h.find(['/', ':']) {
        h.truncate(i);
    }
    let h = h.trim_end_matches('.').to_string();
    (host_error(&h).is_none() && h != host).then_some(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_span_stops_at_the_closing_bracket() {
        let src = "[service] # x]\nname = 1\n";
        assert_eq!(header_span(src, 0..src.len()), Some(0..9));
        let src = "[[alerts]]\nname = 'a'";
        assert_eq!(header_span(src, 0..src.len()), Some(0..10));
        let src = "[\"a]b\"]\n";
        assert_eq!(header_span(src, 0..src.len()), Some(0..7));
        assert_eq!(header_span("x = 1", 0..5), None);
        assert_eq!(header_span("[x", 0..99), Some(0..2));
    }

    #[test]
    fn identifiers() {
        assert!(is_identifier("LOG_LEVEL"));
        assert!(is_identifier("_x1"));
        assert!(!is_identifier("1X"));
        assert!(!is_identifier("LOG-LEVEL"));
        assert!(!is_identifier(""));
        assert_eq!(suggest_identifier("LOG-LEVEL"), Some("LOG_LEVEL".into()));
        assert_eq!(suggest_identifier("1X"), Some("_1X".into()));
        assert_eq!(suggest_identifier("-"), None);
    }

    #[test]
    fn hosts() {
        assert_eq!(host_error("checkout.localhost"), None);
        assert_eq!(host_error("a-1.example.com"), None);
        assert!(host_error("Checkout.localhost").is_some());
        assert!(host_error("a..b").is_some());
        assert!(host_error("-a.b").is_some());
        assert!(host_error("a_b.c").is_some());
        assert_eq!(
            suggest_host("https://Checkout.example.com:8080/x"),
            Some("checkout.example.com".into())
        );
        assert_eq!(
            suggest_host("checkout.localhost."),
            Some("checkout.localhost".into())
        );
        assert_eq!(suggest_host("a_b"), None);
    }
}
