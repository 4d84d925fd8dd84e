//! The alert state machine of one rule, as Prometheus runs it
//! (`rules/alerting.go`): each element of the condition's result is an
//! alert, pending from the first evaluation it appears in, firing once it
//! has been active for `for`, resolved at the first evaluation it is absent
//! from (held firing for `keep_firing_for` first, if set). A pending alert
//! that disappears is dropped without a trace.

use std::collections::{BTreeMap, HashMap};

use crate::rules::{fingerprint, render, Rule};

/// Where an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertState {
    /// The condition holds, for less than `for`.
    Pending,
    /// The condition has held for `for` (or is held by `keep_firing_for`).
    Firing,
}

impl AlertState {
    /// The `alertstate` label value of the `ALERTS` series.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Firing => "firing",
        }
    }
}

/// One alert of a rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// Label-set fingerprint.
    pub fingerprint: String,
    /// All labels: the result's, the rule's, `alertname`, `severity`, `service`, `team`.
    pub labels: BTreeMap<String, String>,
    /// Rendered `summary`, `description`, `runbook_url`.
    pub annotations: BTreeMap<String, String>,
    /// The latest value.
    pub value: f64,
    /// Pending or firing.
    pub state: AlertState,
    /// When it became active (ms).
    pub active_at: i64,
    /// When it started firing (ms).
    pub fired_at: Option<i64>,
    /// Since when the condition has been absent while `keep_firing_for` holds it (ms).
    keep_firing_since: Option<i64>,
}

/// What one evaluation changed.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A new alert, pending.
    Pending(Alert),
    /// An alert started firing (or is firing at its first evaluation, `for = 0`).
    Fired(Alert),
    /// A firing alert is still firing (its value may have changed).
    StillFiring(Alert),
    /// A firing alert stopped.
    Resolved(Alert),
}

/// The alerts of one rule between evaluations.
#[derive(Debug, Default)]
pub struct RuleState {
    active: HashMap<String, Alert>,
}

impl RuleState {
    /// Alerts currently pending or firing.
    pub fn alerts(&self) -> impl Iterator<Item = &Alert> {
        self.active.values()
    }

    /// Seeds a firing alert remembered from before a restart (so that it
    /// resolves when its condition is gone instead of staying open forever).
    pub fn restore_firing(
        &mut self,
        labels: BTreeMap<String, String>,
        annotations: BTreeMap<String, String>,
        value: f64,
        since: i64,
    ) {
        let fp = fingerprint(&labels);
        self.active.insert(
            fp.clone(),
            Alert {
                fingerprint: fp,
                labels,
                annotations,
                value,
                state: AlertState::Firing,
                active_at: since,
                fired_at: Some(since),
                keep_firing_since: None,
            },
        );
    }

    /// Applies one evaluation's result (`(labels, value)` per element) at `now` (ms).
    pub fn apply(
        &mut self,
        rule: &Rule,
        result: Vec<(BTreeMap<String, String>, f64)>,
        now: i64,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut seen: HashMap<String, ()> = HashMap::new();
        for (mut labels, value) in result {
            labels.remove("__name__");
            for (k, v) in &rule.labels {
                labels.insert(k.clone(), v.clone());
            }
            labels.insert("alertname".into(), rule.name.clone());
            labels.insert("severity".into(), rule.severity.as_str().into());
            labels.insert("service".into(), rule.service.to_string());
            labels.insert("team".into(), rule.team.to_string());
            let mut annotations = BTreeMap::new();
            annotations.insert("summary".to_string(), render(&rule.summary, &labels, value));
            if !rule.description.is_empty() {
                annotations.insert(
                    "description".to_string(),
                    render(&rule.description, &labels, value),
                );
            }
            if let Some(rb) = &rule.runbook {
                annotations.insert("runbook_url".to_string(), rb.clone());
            }
            let fp = fingerprint(&labels);
            // Like Prometheus, two elements with one label set after the rule's
            // labels are applied are one alert; the last value wins.
            seen.insert(fp.clone(), ());
            match self.active.get_mut(&fp) {
                Some(a) => {
                    a.value = value;
                    a.annotations = annotations;
                    a.keep_firing_since = None;
                }
                None => {
                    let a = Alert {
                        fingerprint: fp.clone(),
                        labels,
                        annotations,
                        value,
                        state: AlertState::Pending,
                        active_at: now,
                        fired_at: None,
                        keep_firing_since: None,
                    };
                    self.active.insert(fp, a);
                }
            }
        }
        let keep_ms = rule.keep_firing_for.as_millis() as i64;
        let hold_ms = rule.for_.as_millis() as i64;
        let mut gone = Vec::new();
        for (fp, a) in self.active.iter_mut() {
            if !seen.contains_key(fp) {
                let mut keep = false;
                if a.state == AlertState::Firing && keep_ms > 0 {
                    let since = *a.keep_firing_since.get_or_insert(now);
                    keep = now - since < keep_ms;
                }
                if !keep {
                    gone.push(fp.clone());
                    continue;
                }
            }
            match a.state {
                AlertState::Pending if now - a.active_at >= hold_ms => {
                    a.state = AlertState::Firing;
                    a.fired_at = Some(now);
                    changes.push(Change::Fired(a.clone()));
                }
                AlertState::Pending => {
                    if a.active_at == now {
                        changes.push(Change::Pending(a.clone()));
                    }
                }
                AlertState::Firing => changes.push(Change::StillFiring(a.clone())),
            }
        }
        for fp in gone {
            if let Some(a) = self.active.remove(&fp) {
                if a.state == AlertState::Firing {
                    changes.push(Change::Resolved(a));
                }
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::rules::Condition;
    use tend_core::{ServiceName, TeamName};
    use tend_manifest::Severity;

    fn rule(for_s: u64, keep_s: u64) -> Rule {
        Rule {
            name: "r".into(),
            service: ServiceName::parse("web").unwrap(),
            team: TeamName::parse("payments").unwrap(),
            condition: Condition::InstancesNotReady,
            for_: Duration::from_secs(for_s),
            keep_firing_for: Duration::from_secs(keep_s),
            severity: Severity::Page,
            summary: "{{ $labels.instance }} is {{ $value }}".into(),
            description: String::new(),
            labels: BTreeMap::from([("tier".into(), "web".into())]),
            runbook: None,
            builtin: false,
        }
    }

    fn v(instance: &str, value: f64) -> Vec<(BTreeMap<String, String>, f64)> {
        vec![(
            BTreeMap::from([("instance".to_string(), instance.to_string())]),
            value,
        )]
    }

    fn kinds(c: &[Change]) -> Vec<&'static str> {
        c.iter()
            .map(|c| match c {
                Change::Pending(_) => "pending",
                Change::Fired(_) => "fired",
                Change::StillFiring(_) => "firing",
                Change::Resolved(_) => "resolved",
            })
            .collect()
    }

    #[test]
    fn pending_then_firing_after_for_then_resolved() {
        let r = rule(10, 0);
        let mut s = RuleState::default();
        assert_eq!(kinds(&s.apply(&r, v("a", 1.0), 0)), ["pending"]);
        assert!(s.apply(&r, v("a", 2.0), 5_000).is_empty());
        let c = s.apply(&r, v("a", 3.0), 10_000);
        assert_eq!(kinds(&c), ["fired"]);
        let Change::Fired(a) = &c[0] else { panic!() };
        assert_eq!(a.labels["alertname"], "r");
        assert_eq!(a.labels["team"], "payments");
        assert_eq!(a.labels["tier"], "web");
        assert_eq!(a.annotations["summary"], "a is 3");
        assert_eq!(kinds(&s.apply(&r, v("a", 3.0), 15_000)), ["firing"]);
        assert_eq!(kinds(&s.apply(&r, vec![], 20_000)), ["resolved"]);
        assert_eq!(s.alerts().count(), 0);
    }

    #[test]
    fn a_pending_alert_that_clears_never_fires() {
        let r = rule(10, 0);
        let mut s = RuleState::default();
        s.apply(&r, v("a", 1.0), 0);
        assert!(s.apply(&r, vec![], 5_000).is_empty());
        // It starts over.
        assert_eq!(kinds(&s.apply(&r, v("a", 1.0), 6_000)), ["pending"]);
        assert!(s.apply(&r, v("a", 1.0), 15_000).is_empty());
        assert_eq!(kinds(&s.apply(&r, v("a", 1.0), 16_000)), ["fired"]);
    }

    #[test]
    fn for_zero_fires_at_once_and_keep_firing_for_holds() {
        let r = rule(0, 10);
        let mut s = RuleState::default();
        assert_eq!(kinds(&s.apply(&r, v("a", 1.0), 0)), ["fired"]);
        assert_eq!(kinds(&s.apply(&r, vec![], 5_000)), ["firing"]);
        assert_eq!(kinds(&s.apply(&r, vec![], 14_000)), ["firing"]);
        assert_eq!(kinds(&s.apply(&r, vec![], 15_000)), ["resolved"]);
        // Coming back while held resets the hold.
        let mut s = RuleState::default();
        s.apply(&r, v("a", 1.0), 0);
        s.apply(&r, vec![], 5_000);
        s.apply(&r, v("a", 1.0), 6_000);
        assert_eq!(kinds(&s.apply(&r, vec![], 12_000)), ["firing"]);
    }

    #[test]
    fn each_label_set_is_its_own_alert() {
        let r = rule(0, 0);
        let mut s = RuleState::default();
        let mut both = v("a", 1.0);
        both.extend(v("b", 1.0));
        assert_eq!(kinds(&s.apply(&r, both, 0)), ["fired", "fired"]);
        let c = s.apply(&r, v("a", 1.0), 1_000);
        let mut k = kinds(&c);
        k.sort();
        assert_eq!(k, ["firing", "resolved"]);
    }
}
