//! Forwarding of alerts to an external Alertmanager (`POST /api/v2/alerts`),
//! for teams that already route with one. Like Prometheus: every firing
//! alert is re-sent at every evaluation with an `endsAt` a few intervals
//! ahead (so Alertmanager resolves it by itself if tend goes away), and a
//! resolved alert is sent with its `endsAt` for a while after it resolved.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};
use tend_core::Timestamp;

use crate::eval::Alert;

/// How long a resolved alert keeps being sent (Prometheus' resolvedRetention).
pub const RESOLVED_RETENTION: Duration = Duration::from_secs(15 * 60);
/// Prometheus' default resend delay: `endsAt` of a firing alert is four of
/// these (or four intervals, if longer) ahead.
const RESEND_DELAY: Duration = Duration::from_secs(60);

/// One alert in Alertmanager's v2 API shape.
pub fn am_alert(alert: &Alert, ends_at_ms: i64, generator_url: &str) -> Value {
    json!({
        "labels": alert.labels,
        "annotations": alert.annotations,
        "startsAt": Timestamp::from_millis(alert.fired_at.unwrap_or(alert.active_at)).to_string(),
        "endsAt": Timestamp::from_millis(ends_at_ms).to_string(),
        "generatorURL": generator_url,
    })
}

/// `endsAt` of an alert still firing at `now` (ms).
pub fn valid_until(now: i64, interval: Duration) -> i64 {
    now + 4 * interval.max(RESEND_DELAY).as_millis() as i64
}

/// Alerts resolved recently, by fingerprint: (the alert, resolved at, ms).
#[derive(Debug, Default)]
pub struct Resolved {
    alerts: HashMap<String, (Alert, i64)>,
}

impl Resolved {
    /// Remembers an alert that resolved at `at` (ms).
    pub fn add(&mut self, alert: Alert, at: i64) {
        self.alerts.insert(alert.fingerprint.clone(), (alert, at));
    }

    /// Forgets alerts firing again and those resolved longer ago than the
    /// retention; returns the rest as (alert, resolved at).
    pub fn current(&mut self, now: i64, firing: &[&Alert]) -> Vec<(Alert, i64)> {
        let keep = RESOLVED_RETENTION.as_millis() as i64;
        self.alerts.retain(|fp, (_, at)| {
            now - *at <= keep && !firing.iter().any(|a| &a.fingerprint == fp)
        });
        self.alerts.values().cloned().collect()
    }
}

/// The body of one `POST /api/v2/alerts`: every firing alert with its
/// `endsAt` ahead, every recently resolved one with its end.
pub fn body(
    firing: &[&Alert],
    resolved: &[(Alert, i64)],
    now: i64,
    interval: Duration,
    external_url: &str,
) -> Value {
    let base = external_url.trim_end_matches('/');
    let url = |a: &Alert| match a.labels.get("service") {
        Some(s) => format!("{base}/api/v1/incidents?service={s}"),
        None => format!("{base}/api/v1/incidents"),
    };
    let until = valid_until(now, interval);
    let mut out: Vec<Value> = firing.iter().map(|a| am_alert(a, until, &url(a))).collect();
    out.extend(resolved.iter().map(|(a, at)| am_alert(a, *at, &url(a))));
    Value::Array(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::eval::RuleState;

    fn firing(name: &str) -> Alert {
        let mut s = RuleState::default();
        let labels = BTreeMap::from([
            ("alertname".to_string(), name.to_string()),
            ("service".to_string(), "web".to_string()),
        ]);
        s.restore_firing(labels, BTreeMap::new(), 1.0, 1_000);
        let a = s.alerts().next().unwrap().clone();
        a
    }

    #[test]
    fn firing_alerts_end_ahead_and_resolved_ones_at_their_end() {
        let a = firing("a");
        let b = firing("b");
        let v = body(
            &[&a],
            &[(b, 5_000)],
            10_000,
            Duration::from_secs(5),
            "http://tend:7070/",
        );
        let list = v.as_array().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0]["labels"]["alertname"], "a");
        assert_eq!(list[0]["startsAt"], "1970-01-01T00:00:01.000Z");
        // 4 x max(1 m, 5 s) after now.
        assert_eq!(list[0]["endsAt"], "1970-01-01T00:04:10.000Z");
        assert_eq!(
            list[0]["generatorURL"],
            "http://tend:7070/api/v1/incidents?service=web"
        );
        assert_eq!(list[1]["endsAt"], "1970-01-01T00:00:05.000Z");
    }

    #[test]
    fn resolved_alerts_are_kept_for_the_retention_unless_firing_again() {
        let mut r = Resolved::default();
        let a = firing("a");
        r.add(a.clone(), 0);
        assert_eq!(r.current(1_000, &[]).len(), 1);
        assert!(r.current(1_000, &[&a]).is_empty(), "firing again");
        r.add(a, 0);
        let late = RESOLVED_RETENTION.as_millis() as i64 + 1;
        assert!(r.current(late, &[]).is_empty());
    }
}
