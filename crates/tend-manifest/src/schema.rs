//! The keys each table of `tend.toml` accepts, with an example for help texts.
//!
//! Keeping the schema as data (rather than scattered through the walker) lets
//! one place answer "is this key known?", "what did they mean?" and "show me
//! an example", and keeps docs/manifest.md easy to check against the code.

/// One key a table accepts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Field {
    /// The key as written in `tend.toml`.
    pub key: &'static str,
    /// A line of TOML showing a valid value, used in help texts.
    pub example: &'static str,
    /// Names people reach for from other tools; suggested as this key.
    pub aliases: &'static [&'static str],
}

const fn field(key: &'static str, example: &'static str) -> Field {
    Field {
        key,
        example,
        aliases: &[],
    }
}

const fn aliased(
    key: &'static str,
    example: &'static str,
    aliases: &'static [&'static str],
) -> Field {
    Field {
        key,
        example,
        aliases,
    }
}

/// `[service]`.
pub(crate) const SERVICE: &[Field] = &[
    aliased("name", "name = \"checkout\"", &["service", "id"]),
    aliased("owner", "owner = \"payments\"", &["team", "owners"]),
    aliased("description", "description = \"Takes orders\"", &["desc"]),
    aliased("runbook", "runbook = \"docs/runbook.md\"", &["runbook_url"]),
];

/// `[build]`.
pub(crate) const BUILD: &[Field] = &[aliased(
    "command",
    "command = \"cargo build --release\"",
    &["cmd", "run", "script"],
)];

/// `[run]`.
pub(crate) const RUN: &[Field] = &[
    aliased(
        "command",
        "command = \"./target/release/checkout\"",
        &["cmd", "exec", "start", "entrypoint"],
    ),
    aliased(
        "instances",
        "instances = 2",
        &["replicas", "count", "scale"],
    ),
    aliased(
        "grace_period",
        "grace_period = \"10s\"",
        &["stop_timeout", "termination_grace_period"],
    ),
    aliased("memory", "memory = \"256MiB\"", &["mem", "memory_limit"]),
    aliased("cpus", "cpus = 0.5", &["cpu", "cpu_limit"]),
];

/// `[health]`.
pub(crate) const HEALTH: &[Field] = &[
    aliased("http", "http = \"/healthz\"", &["path", "http_path", "url"]),
    field("tcp", "tcp = true"),
    aliased("exec", "exec = \"./healthcheck\"", &["command", "cmd"]),
    aliased("interval", "interval = \"2s\"", &["period", "every"]),
    field("timeout", "timeout = \"1s\""),
    aliased(
        "healthy_threshold",
        "healthy_threshold = 1",
        &["success_threshold"],
    ),
    aliased(
        "unhealthy_threshold",
        "unhealthy_threshold = 3",
        &["failure_threshold", "retries"],
    ),
    aliased(
        "start_period",
        "start_period = \"30s\"",
        &["initial_delay", "grace_period"],
    ),
];

/// `[http]`.
pub(crate) const HTTP: &[Field] = &[
    aliased(
        "host",
        "host = \"checkout.localhost\"",
        &["hostname", "domain", "hosts"],
    ),
    aliased(
        "paths",
        "paths = [\"/api\", \"/checkout\"]",
        &["path", "prefix", "prefixes"],
    ),
];

/// `[deploy]`.
pub(crate) const DEPLOY: &[Field] = &[
    field("strategy", "strategy = \"rolling\""),
    aliased("max_surge", "max_surge = 1", &["surge"]),
    aliased("max_unavailable", "max_unavailable = 0", &["unavailable"]),
    aliased("auto_rollback", "auto_rollback = true", &["rollback"]),
    aliased(
        "healthy_deadline",
        "healthy_deadline = \"60s\"",
        &["deadline", "timeout"],
    ),
    aliased(
        "verify",
        "verify = \"10s\"",
        &["verify_window", "verification"],
    ),
];

/// One `[[alerts]]` entry.
pub(crate) const ALERT: &[Field] = &[
    aliased("name", "name = \"slow-checkout\"", &["alert"]),
    aliased(
        "expr",
        "expr = 'rate(http_requests_total{code=~\"5..\"}[5m]) > 1'",
        &["expression", "query", "rule"],
    ),
    aliased("for", "for = \"2m\"", &["duration", "pending"]),
    field("keep_firing_for", "keep_firing_for = \"5m\""),
    aliased("severity", "severity = \"page\"", &["level", "priority"]),
    field("summary", "summary = \"Checkout is slow\""),
    field("description", "description = \"p99 latency above 500ms\""),
    field("labels", "labels = { tier = \"frontend\" }"),
    aliased(
        "logs",
        "logs = 'panic|deadlock'",
        &["log", "pattern", "grep"],
    ),
    field("window", "window = \"5m\""),
    aliased("threshold", "threshold = 10", &["count", "min_lines"]),
];

/// `[alert_defaults]`.
pub(crate) const ALERT_DEFAULTS: &[Field] = &[
    aliased(
        "disable",
        "disable = [\"high-latency\"]",
        &["disabled", "off"],
    ),
    aliased("crash_restarts", "crash_restarts = 3", &["restarts"]),
    field("crash_window", "crash_window = \"5m\""),
    field("not_ready_for", "not_ready_for = \"2m\""),
    aliased("error_ratio", "error_ratio = 0.05", &["error_rate"]),
    aliased("error_min_rps", "error_min_rps = 5", &["min_rps"]),
    field("error_for", "error_for = \"1m\""),
    field("latency_factor", "latency_factor = 3"),
    field("latency_for", "latency_for = \"5m\""),
    field("latency_window", "latency_window = \"5m\""),
    field("latency_baseline", "latency_baseline = \"1h\""),
    field("memory_ratio", "memory_ratio = 0.9"),
    field("memory_for", "memory_for = \"1m\""),
];

/// `[metrics]`.
pub(crate) const METRICS: &[Field] = &[
    aliased(
        "path",
        "path = \"/metrics\"",
        &["metrics_path", "endpoint", "url"],
    ),
    aliased(
        "interval",
        "interval = \"10s\"",
        &["scrape_interval", "every", "period"],
    ),
];

/// `[secrets]`.
pub(crate) const SECRETS: &[Field] = &[aliased(
    "required",
    "required = [\"DATABASE_URL\"]",
    &["require", "needs", "names"],
)];

/// `[env]` has free-form keys; this is only used for examples.
pub(crate) const ENV_EXAMPLE: &str = "LOG_LEVEL = \"info\"";

/// `[service]` as a section.
pub(crate) const SERVICE_SECTION: Section = Section::new("service", SERVICE, false);
/// `[build]` as a section.
pub(crate) const BUILD_SECTION: Section = Section::new("build", BUILD, false);
/// `[run]` as a section.
pub(crate) const RUN_SECTION: Section = Section::new("run", RUN, false);
/// `[health]` as a section.
pub(crate) const HEALTH_SECTION: Section = Section::new("health", HEALTH, false);
/// `[http]` as a section.
pub(crate) const HTTP_SECTION: Section = Section::new("http", HTTP, false);
/// `[deploy]` as a section.
pub(crate) const DEPLOY_SECTION: Section = Section::new("deploy", DEPLOY, false);
/// `[metrics]` as a section.
pub(crate) const METRICS_SECTION: Section = Section::new("metrics", METRICS, false);
/// `[secrets]` as a section.
pub(crate) const SECRETS_SECTION: Section = Section::new("secrets", SECRETS, false);
/// `[env]` as a section (free-form keys).
pub(crate) const ENV_SECTION: Section = Section::new("env", &[], false);
/// `[[alerts]]` as a section.
pub(crate) const ALERTS_SECTION: Section = Section::new("alerts", ALERT, true);
/// `[alert_defaults]` as a section.
pub(crate) const ALERT_DEFAULTS_SECTION: Section =
    Section::new("alert_defaults", ALERT_DEFAULTS, false);

/// Every top-level section, in the order the docs present them.
pub(crate) const SECTIONS: &[Section] = &[
    SERVICE_SECTION,
    BUILD_SECTION,
    RUN_SECTION,
    HEALTH_SECTION,
    HTTP_SECTION,
    DEPLOY_SECTION,
    METRICS_SECTION,
    ENV_SECTION,
    SECRETS_SECTION,
    ALERTS_SECTION,
    ALERT_DEFAULTS_SECTION,
];

/// A top-level section.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Section {
    /// The section's key.
    pub name: &'static str,
    /// Its keys (empty for free-form `[env]`).
    pub fields: &'static [Field],
    /// Written `[[name]]` (an array of tables) rather than `[name]`.
    pub array: bool,
}

impl Section {
    const fn new(name: &'static str, fields: &'static [Field], array: bool) -> Self {
        Self {
            name,
            fields,
            array,
        }
    }

    /// The header as written: `[run]` or `[[alerts]]`.
    pub fn header(&self) -> String {
        if self.array {
            format!("[[{}]]", self.name)
        } else {
            format!("[{}]", self.name)
        }
    }
}

/// Finds the section called `name`.
pub(crate) fn section(name: &str) -> Option<&'static Section> {
    SECTIONS.iter().find(|s| s.name == name)
}

/// Sections (other than `except`) that have a key called `key`, as headers.
pub(crate) fn homes_of(key: &str, except: &str) -> Vec<String> {
    SECTIONS
        .iter()
        .filter(|s| s.name != except && s.fields.iter().any(|f| f.key == key))
        .map(Section::header)
        .collect()
}

/// `a`, `b` and `c`: a list for a sentence.
pub(crate) fn list<I, S>(items: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    join(items, "and")
}

/// `a`, `b` or `c`: a list of alternatives for a sentence.
pub(crate) fn list_or<I, S>(items: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    join(items, "or")
}

fn join<I, S>(items: I, conjunction: &str) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let items: Vec<String> = items.into_iter().map(|s| s.as_ref().to_string()).collect();
    match items.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} {conjunction} {last}", init.join(", ")),
    }
}

/// The known field closest to `input`, if one is close enough to be a typo.
pub(crate) fn closest_field(input: &str, fields: &[Field]) -> Option<&'static str> {
    let lower = input.to_ascii_lowercase();
    if let Some(f) = fields.iter().find(|f| f.aliases.contains(&lower.as_str())) {
        return Some(f.key);
    }
    closest(input, fields.iter().map(|f| f.key))
}

/// The candidate closest to `input` by edit distance, if close enough.
///
/// "Close enough" is at most a third of the candidate's length in edits (so
/// `instance` finds `instances` but `x` finds nothing), or one being a prefix of
/// the other (`healthcheck` finds `health`).
pub(crate) fn closest<'a>(
    input: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let lower = input.to_ascii_lowercase().replace('-', "_");
    candidates
        .into_iter()
        .filter_map(|c| {
            let distance = strsim::damerau_levenshtein(&lower, c);
            let typo = distance <= (c.len() / 3).max(1);
            let prefix = lower.len().min(c.len()) >= 3
                && (lower.starts_with(c) || c.starts_with(lower.as_str()));
            (typo || prefix).then_some((distance, c))
        })
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_and_aliases_find_their_key() {
        assert_eq!(closest_field("instance", RUN), Some("instances"));
        assert_eq!(closest_field("Instances", RUN), Some("instances"));
        assert_eq!(closest_field("grace-period", RUN), Some("grace_period"));
        assert_eq!(closest_field("replicas", RUN), Some("instances"));
        assert_eq!(
            closest("healthcheck", SECTIONS.iter().map(|s| s.name)),
            Some("health")
        );
        assert_eq!(
            closest("alert", SECTIONS.iter().map(|s| s.name)),
            Some("alerts")
        );
    }

    #[test]
    fn far_names_find_nothing() {
        assert_eq!(closest_field("x", RUN), None);
        assert_eq!(closest_field("banana", RUN), None);
        assert_eq!(closest("database", SECTIONS.iter().map(|s| s.name)), None);
    }

    #[test]
    fn docs_describe_every_section_and_key() {
        let docs = include_str!("../../../docs/manifest.md");
        for section in SECTIONS {
            let heading = format!("## `{}`", section.header());
            assert!(docs.contains(&heading), "docs lack {heading}");
            for field in section.fields {
                let row = format!("| `{}` |", field.key);
                assert!(docs.contains(&row), "docs lack a row for `{}`", field.key);
            }
        }
    }

    #[test]
    fn lists_read_as_sentences() {
        assert_eq!(list(["`a`"]), "`a`");
        assert_eq!(list(["`a`", "`b`", "`c`"]), "`a`, `b` and `c`");
        assert_eq!(list_or(["`a`", "`b`"]), "`a` or `b`");
    }
}
