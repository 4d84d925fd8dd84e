//! An instance's environment: the manifest's `[env]` with the service's config
//! vars on top, and `${NAME}` references between them resolved.

use std::collections::BTreeMap;

/// Why an environment cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// Variables refer to each other in a loop.
    #[error("config vars refer to each other in a loop: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    /// A `${` without its `}`.
    #[error("`{name}` has a `${{` without a closing `}}`")]
    Unclosed {
        /// The variable whose value is malformed.
        name: String,
    },
}

/// `base` (the manifest's `[env]`) overridden by `overrides` (config vars),
/// with every `${NAME}` replaced by NAME's resolved value (empty when NAME is
/// not set, as a shell does). `$$` stands for a literal `$`.
pub fn resolve(
    base: &BTreeMap<String, String>,
    overrides: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, EnvError> {
    let mut raw = base.clone();
    raw.extend(overrides.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut done: BTreeMap<String, String> = BTreeMap::new();
    for name in raw.keys() {
        let mut stack = Vec::new();
        expand(name, &raw, &mut done, &mut stack)?;
    }
    Ok(done)
}

fn expand(
    name: &str,
    raw: &BTreeMap<String, String>,
    done: &mut BTreeMap<String, String>,
    stack: &mut Vec<String>,
) -> Result<String, EnvError> {
    if let Some(v) = done.get(name) {
        return Ok(v.clone());
    }
    let Some(value) = raw.get(name) else {
        return Ok(String::new());
    };
    if let Some(pos) = stack.iter().position(|n| n == name) {
        let mut cycle = stack[pos..].to_vec();
        cycle.push(name.to_string());
        return Err(EnvError::Cycle(cycle));
    }
    stack.push(name.to_string());
    let mut out = String::with_capacity(value.len());
    let mut rest = value.as_str();
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('{') {
            let end = inner.find('}').ok_or_else(|| EnvError::Unclosed {
                name: name.to_string(),
            })?;
            out.push_str(&expand(&inner[..end], raw, done, stack)?);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    stack.pop();
    done.insert(name.to_string(), out.clone());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn overrides_and_references() {
        let base = map(&[("DB_HOST", "localhost"), ("LOG", "info")]);
        let over = map(&[
            ("DB_HOST", "db.internal"),
            ("DATABASE_URL", "postgres://${DB_HOST}/app"),
            ("PRICE", "$$5 and $HOME"),
            ("EMPTY", "${NOPE}x"),
        ]);
        let env = resolve(&base, &over).unwrap();
        assert_eq!(env["DATABASE_URL"], "postgres://db.internal/app");
        assert_eq!(env["LOG"], "info");
        assert_eq!(env["PRICE"], "$5 and $HOME");
        assert_eq!(env["EMPTY"], "x");
    }

    #[test]
    fn cycles_and_malformed_references_are_rejected() {
        let err = resolve(
            &map(&[("A", "${B}"), ("B", "${C}"), ("C", "${A}")]),
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert_eq!(
            err,
            EnvError::Cycle(vec!["A".into(), "B".into(), "C".into(), "A".into()])
        );
        assert!(matches!(
            resolve(&map(&[("A", "${A}")]), &BTreeMap::new()),
            Err(EnvError::Cycle(_))
        ));
        assert!(matches!(
            resolve(&map(&[("A", "${B")]), &BTreeMap::new()),
            Err(EnvError::Unclosed { .. })
        ));
    }
}
