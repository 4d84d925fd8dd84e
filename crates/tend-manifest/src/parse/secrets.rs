//! `[secrets]`: the names a service cannot run without.

use std::collections::BTreeMap;

use super::text::is_identifier;
use super::{Tbl, Walker};
use crate::diagnostic::show;
use crate::spec::SecretsSection;

impl Walker<'_> {
    /// `required = ["DATABASE_URL", ...]`: valid, distinct variable names, none
    /// of them also in `[env]` (a value in the manifest is not a secret).
    pub(super) fn secrets(
        &mut self,
        t: &Tbl,
        env: &BTreeMap<String, String>,
    ) -> Option<SecretsSection> {
        self.check_keys(t);
        let (entries, mut ok) = self.string_list(t, "required", "DATABASE_URL")?;
        let mut names: Vec<String> = Vec::new();
        for (name, span) in entries {
            let name = name.as_str();
            let problem = if !is_identifier(name) {
                Some((
                    format!("invalid secret name \"{}\"", show(name)),
                    "names are ASCII letters, digits and `_`, not starting with a digit"
                        .to_string(),
                ))
            } else if name == "PORT" || name.starts_with("TEND_") {
                Some((
                    format!("`{name}` is reserved"),
                    "the platform sets `PORT` and the variables starting with `TEND_`".to_string(),
                ))
            } else if env.contains_key(name) {
                Some((
                    format!("`{name}` is both in [env] and a required secret"),
                    format!("a secret's value is set with `tend secrets set`, never in the manifest; remove `{name}` from [env]"),
                ))
            } else if names.iter().any(|n| n == name) {
                Some((
                    format!("`{name}` is listed twice"),
                    "remove the second one".to_string(),
                ))
            } else {
                None
            };
            if let Some((message, help)) = problem {
                self.report(span, message, "here", Some(help));
                ok = false;
                continue;
            }
            names.push(name.to_string());
        }
        ok.then_some(SecretsSection { required: names })
    }
}

#[cfg(test)]
mod tests {
    const HEAD: &str = "[service]\nname = \"web\"\nowner = \"team\"\n[run]\ncommand = \"./web\"\n";

    fn errors(tail: &str) -> String {
        crate::parse(&format!("{HEAD}{tail}"), "tend.toml")
            .unwrap_err()
            .render(false)
    }

    #[test]
    fn required_names_parse_and_are_checked() {
        let spec = crate::parse(
            &format!("{HEAD}[secrets]\nrequired = [\"DATABASE_URL\", \"API_KEY\"]\n"),
            "tend.toml",
        )
        .unwrap();
        assert_eq!(spec.secrets.required, ["DATABASE_URL", "API_KEY"]);
        assert!(crate::parse(HEAD, "tend.toml")
            .unwrap()
            .secrets
            .required
            .is_empty());
        let out = errors("[secrets]\nrequired = \"DATABASE_URL\"\n");
        assert!(out.contains("use a list"), "{out}");
        let out = errors("[secrets]\nrequired = [\"1BAD\", 3, \"PORT\", \"A\", \"A\"]\n");
        for want in [
            "invalid secret name",
            "must be a string",
            "reserved",
            "listed twice",
        ] {
            assert!(out.contains(want), "{want}: {out}");
        }
        let out = errors("[env]\nTOKEN = \"x\"\n[secrets]\nrequired = [\"TOKEN\"]\n");
        assert!(out.contains("both in [env]"), "{out}");
        let out = errors("[secrets]\nrequire = [\"A\"]\n");
        assert!(out.contains("required"), "{out}");
    }
}
