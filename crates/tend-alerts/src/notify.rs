//! What each kind of channel is sent, and how: the Alertmanager webhook
//! payload (version 4) for generic webhooks, Slack incoming-webhook
//! messages (text + blocks), and PagerDuty Events API v2 events; delivered
//! with retries and backoff on 429, 5xx and connection errors.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use tend_core::incident::{Incident, IncidentAlert, IncidentContext};
use tend_core::model::ChannelKind;

/// PagerDuty's Events API v2 endpoint.
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// What a notification says about its incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyEvent {
    /// The incident opened (or escalated to this channel).
    Trigger,
    /// Someone acknowledged it.
    Acknowledge,
    /// It resolved.
    Resolve,
}

impl NotifyEvent {
    /// `trigger`, `acknowledge` or `resolve` (PagerDuty's `event_action` words).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trigger => "trigger",
            Self::Acknowledge => "acknowledge",
            Self::Resolve => "resolve",
        }
    }
}

/// Everything a payload is made from.
#[derive(Debug, Clone)]
pub struct Notice<'a> {
    /// The incident, as it is now.
    pub incident: &'a Incident,
    /// Its context.
    pub context: &'a IncidentContext,
    /// What happened.
    pub event: NotifyEvent,
    /// The receiving channel, `team/channel`.
    pub receiver: String,
    /// Who is on call for the owning team, if anyone.
    pub oncall: Option<String>,
    /// Who acknowledged or resolved it, for those events.
    pub actor: Option<String>,
    /// The API's base URL (for links).
    pub external_url: &'a str,
}

fn rfc3339(t: tend_core::Timestamp) -> String {
    t.to_string()
}

/// Alertmanager's `endsAt` of an alert without an end.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// The incident's what-changed context as lines of text.
pub fn what_changed(ctx: &IncidentContext) -> String {
    ctx.changes
        .iter()
        .map(|e| format!("{} {} {}", e.time, e.kind, e.message))
        .collect::<Vec<_>>()
        .join("\n")
}

fn incident_url(n: &Notice<'_>) -> String {
    format!(
        "{}/api/v1/incidents/{}",
        n.external_url.trim_end_matches('/'),
        n.incident.id
    )
}

/// Annotations of an alert with the incident's context added, so that any
/// Alertmanager receiver shows what changed and how to roll back.
fn annotations(n: &Notice<'_>, a: &IncidentAlert) -> BTreeMap<String, String> {
    let mut out = a.annotations.clone();
    out.insert("incident".into(), n.incident.id.to_string());
    out.insert("incident_url".into(), incident_url(n));
    out.insert("what_changed".into(), what_changed(n.context));
    out.insert("error_logs".into(), n.context.error_logs.join("\n"));
    out.insert("rollback".into(), n.context.rollback.clone());
    // The value that fired, as Prometheus formats `$value`.
    out.insert("value".into(), crate::rules::format_value(a.value));
    if let Some(rb) = &n.context.runbook {
        out.entry("runbook_url".into())
            .or_insert_with(|| rb.clone());
    }
    if let Some(who) = &n.oncall {
        out.insert("oncall".into(), who.clone());
    }
    out
}

fn common<'a>(
    maps: impl Iterator<Item = &'a BTreeMap<String, String>>,
) -> BTreeMap<String, String> {
    let mut iter = maps;
    let Some(first) = iter.next() else {
        return BTreeMap::new();
    };
    let mut out = first.clone();
    for m in iter {
        out.retain(|k, v| m.get(k) == Some(v));
    }
    out
}

/// An alert's labels and annotations (with the context) as sent.
type AmAlert<'a> = (
    BTreeMap<String, String>,
    BTreeMap<String, String>,
    &'a IncidentAlert,
);

/// The Alertmanager webhook payload, version 4, for the incident's alerts
/// (a resolve notification reports every alert resolved).
pub fn alertmanager_v4(n: &Notice<'_>) -> Value {
    let resolving = n.event == NotifyEvent::Resolve;
    let alerts: Vec<AmAlert<'_>> = n
        .incident
        .alerts
        .iter()
        .filter(|a| resolving || a.status == "firing")
        .map(|a| (a.labels.clone(), annotations(n, a), a))
        .collect();
    let status = if resolving || alerts.is_empty() {
        "resolved"
    } else {
        "firing"
    };
    let group_labels = BTreeMap::from([("service".to_string(), n.incident.service.clone())]);
    let group_key = format!("{{}}:{{service=\"{}\"}}", n.incident.service);
    json!({
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
        "status": status,
        "receiver": n.receiver,
        "groupLabels": group_labels,
        "commonLabels": common(alerts.iter().map(|(l, _, _)| l)),
        "commonAnnotations": common(alerts.iter().map(|(_, a, _)| a)),
        "externalURL": n.external_url,
        "alerts": alerts.iter().map(|(labels, ann, a)| {
            let ends = match (resolving, a.ends_at) {
                (_, Some(t)) => rfc3339(t),
                (true, None) => rfc3339(n.incident.resolved_at.unwrap_or(a.starts_at)),
                (false, None) => ZERO_TIME.to_string(),
            };
            json!({
                "status": if resolving || a.status == "resolved" { "resolved" } else { "firing" },
                "labels": labels,
                "annotations": ann,
                "startsAt": rfc3339(a.starts_at),
                "endsAt": ends,
                "generatorURL": incident_url(n),
                "fingerprint": a.fingerprint,
            })
        }).collect::<Vec<_>>(),
    })
}

/// A Slack incoming-webhook message: `text` (the notification fallback) and
/// Block Kit `blocks`.
pub fn slack(n: &Notice<'_>) -> Value {
    let inc = n.incident;
    let (icon, verb) = match n.event {
        NotifyEvent::Trigger => (":rotating_light:", "triggered"),
        NotifyEvent::Acknowledge => (":eyes:", "acknowledged"),
        NotifyEvent::Resolve => (":white_check_mark:", "resolved"),
    };
    let text = format!(
        "{icon} [{}] incident #{} {verb}: {} (service {}, team {})",
        inc.severity.to_uppercase(),
        inc.id,
        inc.title,
        inc.service,
        inc.team
    );
    let firing: Vec<String> = inc
        .alerts
        .iter()
        .filter(|a| a.status == "firing")
        .map(|a| {
            format!(
                "• *{}* {}",
                a.name,
                a.annotations.get("summary").cloned().unwrap_or_default()
            )
        })
        .collect();
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": truncate(&format!("Incident #{} {verb}: {}", inc.id, inc.title), 150)}}),
        json!({"type": "section", "fields": [
            {"type": "mrkdwn", "text": format!("*Service*\n{}", inc.service)},
            {"type": "mrkdwn", "text": format!("*Team*\n{}", inc.team)},
            {"type": "mrkdwn", "text": format!("*Severity*\n{}", inc.severity)},
            {"type": "mrkdwn", "text": format!("*On call*\n{}", n.oncall.as_deref().unwrap_or("-"))},
        ]}),
    ];
    if n.event == NotifyEvent::Trigger {
        if !firing.is_empty() {
            blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(&firing.join("\n"), 3000)}}));
        }
        let changed = what_changed(n.context);
        if !changed.is_empty() {
            blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(&format!("*What changed*\n```{changed}```"), 3000)}}));
        }
        if !n.context.error_logs.is_empty() {
            blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(&format!("*Recent errors*\n```{}```", n.context.error_logs.join("\n")), 3000)}}));
        }
    }
    let mut ctx = vec![format!("Roll back: `{}`", n.context.rollback)];
    if let Some(rb) = &n.context.runbook {
        ctx.push(format!("Runbook: {rb}"));
    }
    if let Some(who) = &n.actor {
        ctx.push(format!("{verb} by {who}"));
    }
    ctx.push(format!("<{}|incident #{}>", incident_url(n), inc.id));
    blocks.push(json!({"type": "context", "elements": ctx.iter().map(|t| json!({"type": "mrkdwn", "text": t})).collect::<Vec<_>>()}));
    json!({"text": text, "blocks": blocks})
}

/// An e-mail: `subject` and a plain-text `body` with the incident's context.
pub fn email(n: &Notice<'_>) -> Value {
    let inc = n.incident;
    let verb = match n.event {
        NotifyEvent::Trigger => "triggered",
        NotifyEvent::Acknowledge => "acknowledged",
        NotifyEvent::Resolve => "resolved",
    };
    let subject = format!(
        "[{}] incident #{} {verb}: {} (service {}, team {})",
        inc.severity.to_uppercase(),
        inc.id,
        truncate(&inc.title, 120),
        inc.service,
        inc.team
    );
    let mut body = format!(
        "Incident #{} {verb}: {}\n\nService: {}\nTeam: {}\nSeverity: {}\nState: {}\nOn call: {}\n",
        inc.id,
        inc.title,
        inc.service,
        inc.team,
        inc.severity,
        inc.state.as_str(),
        n.oncall.as_deref().unwrap_or("-"),
    );
    if let Some(who) = &n.actor {
        body.push_str(&format!("{} by: {who}\n", capitalise(verb)));
    }
    body.push_str("\nAlerts:\n");
    for a in &inc.alerts {
        body.push_str(&format!(
            "- {} ({}, value {}): {}\n",
            a.name,
            a.status,
            a.value,
            a.annotations
                .get("summary")
                .map(String::as_str)
                .unwrap_or("")
        ));
    }
    let changed = what_changed(n.context);
    body.push_str("\nWhat changed (last 30 minutes):\n");
    body.push_str(if changed.is_empty() {
        "(nothing recorded)"
    } else {
        &changed
    });
    body.push('\n');
    if !n.context.error_logs.is_empty() {
        body.push_str("\nRecent errors:\n");
        body.push_str(&n.context.error_logs.join("\n"));
        body.push('\n');
    }
    if let Some(rb) = &n.context.runbook {
        body.push_str(&format!("\nRunbook: {rb}\n"));
    }
    body.push_str(&format!(
        "\nRoll back: {}\nIncident: {}\n",
        n.context.rollback,
        incident_url(n)
    ));
    json!({"subject": subject, "body": body})
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// PagerDuty's severity for tend's.
fn pd_severity(severity: &str) -> &'static str {
    match severity {
        "page" => "critical",
        "ticket" => "warning",
        _ => "info",
    }
}

/// A PagerDuty Events API v2 event; the incident is the `dedup_key`, so
/// acknowledge and resolve close what trigger opened.
pub fn pagerduty(n: &Notice<'_>, routing_key: &str) -> Value {
    let inc = n.incident;
    let dedup_key = format!("tend-incident-{}", inc.id);
    match n.event {
        NotifyEvent::Trigger => {
            let firing: Vec<Value> = inc
                .alerts
                .iter()
                .filter(|a| a.status == "firing")
                .map(|a| json!({"alertname": a.name, "labels": a.labels, "value": a.value, "summary": a.annotations.get("summary")}))
                .collect();
            let mut links = vec![
                json!({"href": incident_url(n), "text": format!("tend incident #{}", inc.id)}),
            ];
            if let Some(rb) = n
                .context
                .runbook
                .as_deref()
                .filter(|r| r.starts_with("http"))
            {
                links.push(json!({"href": rb, "text": "Runbook"}));
            }
            json!({
                "routing_key": routing_key,
                "event_action": "trigger",
                "dedup_key": dedup_key,
                "payload": {
                    "summary": truncate(&format!("[{}] {}", inc.service, inc.title), 1024),
                    "source": inc.service,
                    "severity": pd_severity(&inc.severity),
                    "timestamp": rfc3339(inc.opened_at),
                    "component": inc.service,
                    "group": inc.team.to_string(),
                    "class": inc.alerts.first().map(|a| a.name.clone()).unwrap_or_default(),
                    "custom_details": {
                        "incident": inc.id,
                        "team": inc.team.to_string(),
                        "oncall": n.oncall,
                        "alerts": firing,
                        "what_changed": what_changed(n.context),
                        "error_logs": n.context.error_logs,
                        "rollback": n.context.rollback,
                        "runbook": n.context.runbook,
                    },
                },
                "links": links,
                "client": "tend",
                "client_url": incident_url(n),
            })
        }
        NotifyEvent::Acknowledge | NotifyEvent::Resolve => json!({
            "routing_key": routing_key,
            "event_action": n.event.as_str(),
            "dedup_key": dedup_key,
        }),
    }
}

/// The body for a channel of `kind` (`target` is the PagerDuty routing key
/// for PagerDuty); `None` when this kind has nothing to say for this event
/// (Alertmanager's format has no acknowledgement).
pub fn payload(kind: ChannelKind, target: &str, n: &Notice<'_>) -> Option<Value> {
    match (kind, n.event) {
        (ChannelKind::Webhook, NotifyEvent::Acknowledge) => None,
        (ChannelKind::Webhook, _) => Some(alertmanager_v4(n)),
        (ChannelKind::Slack, _) => Some(slack(n)),
        (ChannelKind::Pagerduty, _) => Some(pagerduty(n, target)),
        (ChannelKind::Email, _) => Some(email(n)),
    }
}

/// Delivery settings.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all (the first included).
    pub attempts: u32,
    /// Wait before the second attempt; doubles after each.
    pub first_backoff: Duration,
    /// Longest wait between two attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 6,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// The outcome of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The HTTP status, if an answer came.
    pub status: Option<u16>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Whether another attempt may succeed (429, 5xx, connection errors).
    pub retryable: bool,
}

/// POSTs `body` to `url` once.
pub async fn post_once(http: &reqwest::Client, url: &str, body: &str) -> Attempt {
    let sent = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(
            reqwest::header::USER_AGENT,
            concat!("tend/", env!("CARGO_PKG_VERSION")),
        )
        .body(body.to_string())
        .send()
        .await;
    match sent {
        Ok(resp) => {
            let status = resp.status();
            if status.is_success() {
                Attempt {
                    status: Some(status.as_u16()),
                    error: None,
                    retryable: false,
                }
            } else {
                let text = resp.text().await.unwrap_or_default();
                let text: String = text.chars().take(200).collect();
                Attempt {
                    status: Some(status.as_u16()),
                    error: Some(format!("HTTP {status}: {}", text.trim())),
                    retryable: status.as_u16() == 429 || status.is_server_error(),
                }
            }
        }
        Err(e) => Attempt {
            status: None,
            error: Some(format!("cannot reach the receiver: {e}")),
            retryable: true,
        },
    }
}

/// The wait before attempt `n` (counted from 1 for the second attempt).
pub fn backoff(policy: &RetryPolicy, n: u32) -> Duration {
    let factor = 2u32.saturating_pow(n.saturating_sub(1).min(16));
    policy
        .first_backoff
        .saturating_mul(factor)
        .min(policy.max_backoff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tend_core::incident::IncidentState;
    use tend_core::model::Event;
    use tend_core::{TeamName, Timestamp};

    fn incident() -> (Incident, IncidentContext) {
        let labels = BTreeMap::from([
            ("alertname".to_string(), "high-error-rate".to_string()),
            ("service".to_string(), "web".to_string()),
            ("team".to_string(), "payments".to_string()),
            ("severity".to_string(), "page".to_string()),
        ]);
        let inc = Incident {
            id: 7,
            service: "web".into(),
            team: TeamName::parse("payments").unwrap(),
            state: IncidentState::Triggered,
            severity: "page".into(),
            title: "web answers too many 5xx".into(),
            opened_at: Timestamp::from_millis(1_764_590_400_000),
            acked_at: None,
            acked_by: None,
            resolved_at: None,
            resolved_by: None,
            escalation_level: 1,
            alerts: vec![IncidentAlert {
                fingerprint: crate::rules::fingerprint(&labels),
                name: "high-error-rate".into(),
                severity: "page".into(),
                labels,
                annotations: BTreeMap::from([(
                    "summary".to_string(),
                    "web answers too many 5xx".to_string(),
                )]),
                value: 0.5,
                status: "firing".into(),
                starts_at: Timestamp::from_millis(1_764_590_400_000),
                ends_at: None,
            }],
        };
        let ctx = IncidentContext {
            changes: vec![Event {
                id: 1,
                time: Timestamp::from_millis(1_764_590_300_000),
                service: "web".into(),
                kind: "config.changed".into(),
                message: "set SAMPLE_ERROR_RATE".into(),
                actor: Some("alice".into()),
            }],
            error_logs: vec!["boom".into()],
            runbook: Some("https://runbooks.example/web".into()),
            rollback: "tend rollback web".into(),
        };
        (inc, ctx)
    }

    fn notice<'a>(inc: &'a Incident, ctx: &'a IncidentContext, event: NotifyEvent) -> Notice<'a> {
        Notice {
            incident: inc,
            context: ctx,
            event,
            receiver: "payments/hook".into(),
            oncall: Some("alice".into()),
            actor: None,
            external_url: "http://127.0.0.1:7070",
        }
    }

    #[test]
    fn alertmanager_v4_has_exactly_its_fields() {
        let (inc, ctx) = incident();
        let v = alertmanager_v4(&notice(&inc, &ctx, NotifyEvent::Trigger));
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "alerts",
                "commonAnnotations",
                "commonLabels",
                "externalURL",
                "groupKey",
                "groupLabels",
                "receiver",
                "status",
                "truncatedAlerts",
                "version"
            ]
        );
        assert_eq!(v["version"], "4");
        assert_eq!(v["status"], "firing");
        assert_eq!(v["groupLabels"]["service"], "web");
        assert_eq!(v["commonLabels"]["team"], "payments");
        let a = &v["alerts"][0];
        let mut keys: Vec<&str> = a.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "annotations",
                "endsAt",
                "fingerprint",
                "generatorURL",
                "labels",
                "startsAt",
                "status"
            ]
        );
        assert_eq!(a["endsAt"], ZERO_TIME);
        assert_eq!(a["startsAt"], "2025-12-01T12:00:00.000Z");
        assert!(a["annotations"]["what_changed"]
            .as_str()
            .unwrap()
            .contains("config.changed"));
        assert_eq!(a["annotations"]["rollback"], "tend rollback web");
        let v = alertmanager_v4(&notice(&inc, &ctx, NotifyEvent::Resolve));
        assert_eq!(v["status"], "resolved");
        assert_eq!(v["alerts"][0]["status"], "resolved");
        assert_ne!(v["alerts"][0]["endsAt"], ZERO_TIME);
    }

    /// Field by field against https://developer.pagerduty.com/docs/events-api-v2/trigger-events/
    #[test]
    fn pagerduty_events_v2_shape() {
        let (inc, ctx) = incident();
        let v = pagerduty(&notice(&inc, &ctx, NotifyEvent::Trigger), "R0UTINGKEY");
        assert_eq!(v["routing_key"], "R0UTINGKEY");
        assert_eq!(v["event_action"], "trigger");
        assert_eq!(v["dedup_key"], "tend-incident-7");
        let p = &v["payload"];
        assert_eq!(p["summary"], "[web] web answers too many 5xx");
        assert_eq!(p["source"], "web");
        // One of critical, error, warning, info.
        assert_eq!(p["severity"], "critical");
        assert_eq!(p["timestamp"], "2025-12-01T12:00:00.000Z");
        assert_eq!(p["component"], "web");
        assert_eq!(p["group"], "payments");
        assert_eq!(p["class"], "high-error-rate");
        assert!(p["custom_details"]["what_changed"]
            .as_str()
            .unwrap()
            .contains("SAMPLE_ERROR_RATE"));
        assert_eq!(v["links"][1]["href"], "https://runbooks.example/web");
        assert_eq!(v["client"], "tend");
        for event in [NotifyEvent::Acknowledge, NotifyEvent::Resolve] {
            let v = pagerduty(&notice(&inc, &ctx, event), "R0UTINGKEY");
            let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
            keys.sort();
            assert_eq!(keys, ["dedup_key", "event_action", "routing_key"]);
            assert_eq!(v["event_action"], event.as_str());
            assert_eq!(v["dedup_key"], "tend-incident-7");
        }
    }

    /// Against https://api.slack.com/messaging/webhooks and the Block Kit reference.
    #[test]
    fn slack_message_shape() {
        let (inc, ctx) = incident();
        let v = slack(&notice(&inc, &ctx, NotifyEvent::Trigger));
        assert!(v["text"]
            .as_str()
            .unwrap()
            .contains("incident #7 triggered"));
        let blocks = v["blocks"].as_array().unwrap();
        assert_eq!(blocks[0]["type"], "header");
        assert_eq!(blocks[0]["text"]["type"], "plain_text");
        assert!(blocks[0]["text"]["text"].as_str().unwrap().len() <= 150);
        assert_eq!(blocks[1]["type"], "section");
        assert_eq!(blocks[1]["fields"].as_array().unwrap().len(), 4);
        for f in blocks[1]["fields"].as_array().unwrap() {
            assert_eq!(f["type"], "mrkdwn");
        }
        let all = v.to_string();
        assert!(all.contains("What changed"), "{all}");
        assert!(all.contains("tend rollback web"), "{all}");
        let last = blocks.last().unwrap();
        assert_eq!(last["type"], "context");
        assert!(last["elements"].as_array().unwrap().len() <= 10);
        for b in blocks {
            if let Some(t) = b["text"]["text"].as_str() {
                assert!(t.chars().count() <= 3000);
            }
        }
    }

    #[test]
    fn email_has_service_team_and_what_changed() {
        let (inc, ctx) = incident();
        let v = email(&notice(&inc, &ctx, NotifyEvent::Trigger));
        let subject = v["subject"].as_str().unwrap();
        assert_eq!(
            subject,
            "[PAGE] incident #7 triggered: web answers too many 5xx (service web, team payments)"
        );
        let body = v["body"].as_str().unwrap();
        for want in [
            "Service: web",
            "Team: payments",
            "On call: alice",
            "- high-error-rate (firing, value 0.5)",
            "config.changed set SAMPLE_ERROR_RATE",
            "Recent errors:\nboom",
            "Runbook: https://runbooks.example/web",
            "Roll back: tend rollback web",
        ] {
            assert!(body.contains(want), "{want} missing from:\n{body}");
        }
        assert!(body.is_ascii(), "{body}");
        let v = email(&notice(&inc, &ctx, NotifyEvent::Resolve));
        assert!(v["subject"].as_str().unwrap().contains("resolved"));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy::default();
        assert_eq!(backoff(&p, 1), Duration::from_millis(500));
        assert_eq!(backoff(&p, 2), Duration::from_secs(1));
        assert_eq!(backoff(&p, 20), Duration::from_secs(30));
    }
}
