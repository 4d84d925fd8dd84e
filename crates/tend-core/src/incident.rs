//! Incidents, their alerts and notifications, and the on-call set-up of a
//! team (rotation, overrides, escalation policy), as stored and shown.
//!
//! The rules that need no I/O live here too: who is on call at a given
//! time, and which escalation level comes next.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::Event;
use crate::{TeamName, Timestamp, TokenName};

/// Where an incident is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum IncidentState {
    /// Open, nobody has taken it yet: escalation runs.
    Triggered,
    /// Someone is on it: escalation stopped.
    Acknowledged,
    /// Over: every alert cleared, or closed by hand.
    Resolved,
}

impl IncidentState {
    /// The lowercase name used in the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Triggered => "triggered",
            Self::Acknowledged => "acknowledged",
            Self::Resolved => "resolved",
        }
    }

    /// Parses the lowercase name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "triggered" => Self::Triggered,
            "acknowledged" => Self::Acknowledged,
            "resolved" => Self::Resolved,
            _ => return None,
        })
    }
}

/// One alert (one fingerprint) grouped into an incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct IncidentAlert {
    /// Hash of the alert's labels (Prometheus' FNV-1a label-set fingerprint, hex).
    pub fingerprint: String,
    /// The rule's name (`alertname`).
    pub name: String,
    /// `page`, `ticket` or `info`.
    pub severity: String,
    /// Every label of the alert, `alertname`, `service` and `team` included.
    pub labels: BTreeMap<String, String>,
    /// `summary`, `description`, `runbook_url`, ... rendered.
    pub annotations: BTreeMap<String, String>,
    /// The value of the rule's expression when it fired (last seen).
    pub value: f64,
    /// `firing` or `resolved`.
    pub status: String,
    /// When the alert started firing.
    pub starts_at: Timestamp,
    /// When it resolved.
    pub ends_at: Option<Timestamp>,
}

/// What was known about the service when the incident opened.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct IncidentContext {
    /// What changed in the service shortly before: deploys, rollbacks,
    /// config changes, scaling, crashes (its events, oldest first).
    pub changes: Vec<Event>,
    /// The most recent error lines of the service's output.
    pub error_logs: Vec<String>,
    /// The service's runbook, if the manifest names one.
    pub runbook: Option<String>,
    /// The one command that rolls the service back.
    pub rollback: String,
}

/// An incident: the firing alerts of one service, owned by its team.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Incident {
    /// Its number.
    pub id: i64,
    /// The service whose alerts it groups.
    pub service: String,
    /// The team that owns the service (and the incident).
    pub team: TeamName,
    /// Triggered, acknowledged or resolved.
    pub state: IncidentState,
    /// The most urgent severity of its alerts: `page`, `ticket` or `info`.
    pub severity: String,
    /// One line: the first alert's summary.
    pub title: String,
    /// When it opened.
    pub opened_at: Timestamp,
    /// When it was acknowledged.
    pub acked_at: Option<Timestamp>,
    /// Who acknowledged it.
    pub acked_by: Option<String>,
    /// When it was resolved.
    pub resolved_at: Option<Timestamp>,
    /// Who resolved it (`None`: resolved by itself when its alerts cleared).
    pub resolved_by: Option<String>,
    /// The escalation level reached (1 = the first).
    pub escalation_level: u32,
    /// Its alerts, firing and resolved.
    pub alerts: Vec<IncidentAlert>,
}

/// One entry of an incident's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TimelineEntry {
    /// When.
    pub time: Timestamp,
    /// `opened`, `alert.firing`, `alert.resolved`, `notified`, `delivery.failed`,
    /// `escalated`, `acknowledged`, `resolved`.
    pub kind: String,
    /// Who did it, for people's actions.
    pub actor: Option<String>,
    /// What happened, for people.
    pub detail: String,
}

/// One notification to one channel, and how its delivery went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Delivery {
    /// Its number.
    pub id: i64,
    /// The incident it is about.
    pub incident_id: i64,
    /// The team whose channel it went to.
    pub team: String,
    /// The channel's name.
    pub channel: String,
    /// `webhook`, `slack`, `pagerduty` or `email`.
    pub kind: String,
    /// `trigger`, `acknowledge`, `resolve` (what the notification says).
    pub event: String,
    /// `pending`, `sending`, `delivered` or `failed`.
    pub status: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// HTTP status of the last attempt, if one got an answer.
    pub http_status: Option<u16>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it was queued.
    pub created_at: Timestamp,
    /// When it was delivered.
    pub delivered_at: Option<Timestamp>,
}

/// How often the on-call duty passes to the next member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Handoff {
    /// Every day at the hand-off time.
    Daily,
    /// Every week, on the weekday the rotation was set, at the hand-off time.
    Weekly,
}

impl Handoff {
    /// The length of one shift, in milliseconds.
    pub fn period_ms(self) -> i64 {
        match self {
            Self::Daily => 24 * 3600 * 1000,
            Self::Weekly => 7 * 24 * 3600 * 1000,
        }
    }

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Daily => "daily",
            Self::Weekly => "weekly",
        }
    }

    /// Parses the lowercase name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "daily" => Some(Self::Daily),
            "weekly" => Some(Self::Weekly),
            _ => None,
        }
    }
}

/// A team's on-call rotation: members take turns, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Rotation {
    /// Members in turn order (token names of the team's people).
    pub members: Vec<TokenName>,
    /// Daily or weekly shifts.
    pub handoff: Handoff,
    /// The start of the first member's first shift (a hand-off instant).
    pub anchor: Timestamp,
    /// The team's offset from UTC in minutes, when it has no `time_zone`
    /// (hand-offs then come every 24 h or 7 days exactly).
    pub utc_offset_minutes: i32,
    /// The team's time zone (an IANA name such as `Europe/Paris`): hand-offs
    /// stay at the same local time across its daylight-saving changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

/// The IANA time zone named `name` (`Europe/Paris`, `UTC`), as its canonical name.
pub fn parse_time_zone(name: &str) -> Result<String, String> {
    jiff::tz::TimeZone::get(name)
        .ok()
        .and_then(|tz| tz.iana_name().map(str::to_string))
        .ok_or_else(|| {
            format!("unknown time zone {name:?}: use an IANA name such as Europe/Paris or America/New_York")
        })
}

/// The clock hand-offs follow: the named zone, else the fixed offset (also for
/// a name the tz database does not know).
fn clock(utc_offset_minutes: i32, time_zone: Option<&str>) -> jiff::tz::TimeZone {
    use jiff::tz::{Offset, TimeZone};
    time_zone
        .and_then(|n| TimeZone::get(n).ok())
        .unwrap_or_else(|| {
            Offset::from_seconds(utc_offset_minutes.saturating_mul(60))
                .map(TimeZone::fixed)
                .unwrap_or(TimeZone::UTC)
        })
}

/// The latest hand-off instant at or before `now` at `minute_of_day` local
/// time: today's, or yesterday's if today's is still to come. Local time is
/// `time_zone`'s when given (a valid IANA name), else `utc_offset_minutes` from UTC.
pub fn latest_handoff(
    now: Timestamp,
    minute_of_day: i64,
    utc_offset_minutes: i32,
    time_zone: Option<&str>,
) -> Timestamp {
    let tz = clock(utc_offset_minutes, time_zone);
    let at_day = |days_back: i64| -> Option<i64> {
        let day = civil(&tz, now)?
            .date()
            .checked_sub(jiff::Span::new().try_days(days_back).ok()?)
            .ok()?;
        let hour = i8::try_from(minute_of_day / 60).ok()?;
        let minute = i8::try_from(minute_of_day % 60).ok()?;
        let t = jiff::civil::Time::new(hour, minute, 0, 0).ok()?;
        local_instant(&tz, day.to_datetime(t))
    };
    at_day(0)
        .filter(|&at| at <= now.as_millis())
        .or_else(|| at_day(1))
        .map(Timestamp::from_millis)
        // Only out of jiff's range of dates (years ±9999).
        .unwrap_or(now)
}

/// The local date and time in `tz` at `t`.
fn civil(tz: &jiff::tz::TimeZone, t: Timestamp) -> Option<jiff::civil::DateTime> {
    let t = jiff::Timestamp::from_millisecond(t.as_millis()).ok()?;
    Some(t.to_zoned_datetime(tz.clone()).datetime())
}

/// The instant of a local date and time in `tz`: in a gap (clocks jumping
/// forward) the time after it; in a fold (clocks going back) the first one.
fn local_instant(tz: &jiff::tz::TimeZone, dt: jiff::civil::DateTime) -> Option<i64> {
    let z = tz.to_ambiguous_zoned_datetime(dt).compatible().ok()?;
    Some(z.timestamp().as_millisecond())
}

impl Rotation {
    /// Index into `members` of who is on call at `now`, and when that shift ends.
    pub fn shift_at(&self, now: Timestamp) -> Option<(usize, Timestamp)> {
        if self.members.is_empty() {
            return None;
        }
        // Shifts are whole local days on the team's clock; elapsed time
        // divided by 24 h (or 7 d) is at most one off, by a daylight-saving change.
        let tz = clock(self.utc_offset_minutes, self.time_zone.as_deref());
        let now = now.as_millis();
        let mut k = (now - self.anchor.as_millis()).div_euclid(self.handoff.period_ms());
        while self.shift_start(&tz, k)? > now {
            k -= 1;
        }
        while self.shift_start(&tz, k + 1)? <= now {
            k += 1;
        }
        let idx = k.rem_euclid(self.members.len() as i64) as usize;
        Some((idx, Timestamp::from_millis(self.shift_start(&tz, k + 1)?)))
    }

    /// The start of shift `k` (the anchor's is 0) on the local calendar of `tz`.
    fn shift_start(&self, tz: &jiff::tz::TimeZone, k: i64) -> Option<i64> {
        let days = match self.handoff {
            Handoff::Daily => k,
            Handoff::Weekly => k.checked_mul(7)?,
        };
        let dt = civil(tz, self.anchor)?
            .checked_add(jiff::Span::new().try_days(days).ok()?)
            .ok()?;
        local_instant(tz, dt)
    }
}

/// Someone takes the duty for a while, over the rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OncallOverride {
    /// Its number.
    pub id: i64,
    /// Who is on call instead.
    pub member: TokenName,
    /// From.
    pub starts_at: Timestamp,
    /// Until (exclusive).
    pub ends_at: Timestamp,
    /// Who set it.
    pub created_by: Option<String>,
}

/// Who is on call for a team at a time, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OnCall {
    /// The team.
    pub team: TeamName,
    /// Who is on call (`None`: the team has no rotation).
    pub member: Option<TokenName>,
    /// `override`, `rotation` or `none`.
    pub source: String,
    /// When the duty passes to someone else.
    pub until: Option<Timestamp>,
    /// Who takes over then.
    pub next: Option<TokenName>,
    /// The rotation, if any.
    pub rotation: Option<Rotation>,
    /// Overrides that have not ended.
    pub overrides: Vec<OncallOverride>,
    /// The escalation policy in force.
    pub escalation: EscalationPolicy,
}

/// Works out who is on call at `now` from a rotation and overrides (the
/// latest-starting override covering `now` wins over the rotation).
pub fn on_call(
    team: &TeamName,
    rotation: Option<&Rotation>,
    overrides: &[OncallOverride],
    escalation: EscalationPolicy,
    now: Timestamp,
) -> OnCall {
    let active: Vec<OncallOverride> = overrides
        .iter()
        .filter(|o| o.ends_at > now)
        .cloned()
        .collect();
    let covering = active
        .iter()
        .filter(|o| o.starts_at <= now)
        .max_by_key(|o| (o.starts_at, o.id));
    let shift = rotation.and_then(|r| r.shift_at(now));
    let (member, source, until, next) = match (covering, shift, rotation) {
        (Some(o), _, _) => (Some(o.member.clone()), "override", Some(o.ends_at), None),
        (None, Some((i, ends)), Some(r)) => (
            Some(r.members[i].clone()),
            "rotation",
            Some(ends),
            Some(r.members[(i + 1) % r.members.len()].clone()),
        ),
        _ => (None, "none", None, None),
    };
    OnCall {
        team: team.clone(),
        member,
        source: source.to_string(),
        until,
        next,
        rotation: rotation.cloned(),
        overrides: active,
        escalation,
    }
}

/// Who a level of escalation notifies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum EscalationTarget {
    /// One channel of the owning team.
    Channel {
        /// The channel's name.
        name: TokenName,
    },
    /// Every channel of the owning team.
    Team,
    /// The channels of the owning team's member on call now (its shared
    /// channels when nobody is on call or they have none of their own).
    Oncall,
    /// Every channel of another team (e.g. the platform admins).
    OtherTeam {
        /// The team.
        name: TeamName,
    },
}

impl EscalationTarget {
    /// Parses `oncall`, `channel:NAME`, `team`, or `team:NAME`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "team" => Ok(Self::Team),
            None if s == "oncall" => Ok(Self::Oncall),
            Some(("channel", n)) => TokenName::parse(n)
                .map(|name| Self::Channel { name })
                .map_err(|e| format!("channel name {n:?}: {e}")),
            Some(("team", n)) => TeamName::parse(n)
                .map(|name| Self::OtherTeam { name })
                .map_err(|e| format!("team name {n:?}: {e}")),
            _ => Err(format!(
                "unknown target {s:?}: use `oncall`, `team`, `channel:NAME` or `team:NAME`"
            )),
        }
    }
}

impl std::fmt::Display for EscalationTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Channel { name } => write!(f, "channel:{name}"),
            Self::Team => f.write_str("team"),
            Self::Oncall => f.write_str("oncall"),
            Self::OtherTeam { name } => write!(f, "team:{name}"),
        }
    }
}

/// One level of an escalation policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EscalationLevel {
    /// Seconds after the previous level (or the incident opening, for the
    /// first) before this level is notified, unless acknowledged.
    pub delay_secs: u64,
    /// Who is notified.
    pub targets: Vec<EscalationTarget>,
}

/// How a team's `page` incidents escalate while nobody acknowledges them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EscalationPolicy {
    /// Levels in order; the first is notified when the incident opens
    /// (after its delay).
    pub levels: Vec<EscalationLevel>,
    /// How many times the whole policy repeats after the last level.
    pub repeat: u32,
}

impl Default for EscalationPolicy {
    /// Without a policy: every channel of the team, once.
    fn default() -> Self {
        Self {
            levels: vec![EscalationLevel {
                delay_secs: 0,
                targets: vec![EscalationTarget::Team],
            }],
            repeat: 0,
        }
    }
}

impl EscalationPolicy {
    /// The step after (`level`, `round`) — both counted from 0 — if any:
    /// the next level, or the first again while repeats remain.
    pub fn next(&self, level: usize, round: u32) -> Option<(usize, u32)> {
        if level + 1 < self.levels.len() {
            Some((level + 1, round))
        } else if round < self.repeat && !self.levels.is_empty() {
            Some((0, round + 1))
        } else {
            None
        }
    }
}

/// Which incidents a listing returns.
#[derive(Debug, Clone, Default)]
pub struct IncidentFilter {
    /// Only incidents of these teams (`None`: every team).
    pub teams: Option<Vec<TeamName>>,
    /// Only this service's.
    pub service: Option<String>,
    /// Resolved ones too.
    pub include_resolved: bool,
    /// At most this many, newest first (0: 100).
    pub limit: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> TokenName {
        TokenName::parse(s).unwrap()
    }

    const H: i64 = 3600 * 1000;

    #[test]
    fn rotation_hands_off_in_order_and_wraps() {
        let r = Rotation {
            members: vec![n("alice"), n("bob"), n("carol")],
            handoff: Handoff::Daily,
            anchor: Timestamp::from_millis(100 * 24 * H + 9 * H),
            utc_offset_minutes: 60,
            time_zone: None,
        };
        let at = |h: i64| Timestamp::from_millis(100 * 24 * H + h * H);
        assert_eq!(r.shift_at(at(9)).unwrap().0, 0);
        assert_eq!(r.shift_at(at(32)).unwrap().0, 0);
        assert_eq!(r.shift_at(at(33)).unwrap().0, 1);
        assert_eq!(r.shift_at(at(9 + 72)).unwrap().0, 0);
        // Before the anchor counts backwards.
        assert_eq!(r.shift_at(at(8)).unwrap().0, 2);
        assert_eq!(r.shift_at(at(10)).unwrap().1, at(33));
    }

    #[test]
    fn hand_off_anchor_at_a_fixed_offset_is_the_latest_local_hand_off() {
        // 2026-12-01 10:00 UTC; hand-off 09:00 at +02:00 = 07:00 UTC today.
        let now = Timestamp::from_millis(20_423 * 24 * H + 10 * H);
        assert_eq!(
            latest_handoff(now, 9 * 60, 120, None).as_millis(),
            20_423 * 24 * H + 7 * H
        );
        // Hand-off 12:00 at +00:00 is still to come: yesterday's.
        assert_eq!(
            latest_handoff(now, 12 * 60, 0, None).as_millis(),
            20_422 * 24 * H + 12 * H
        );
    }

    /// 2027-03-28 is the night Paris moves from UTC+1 to UTC+2; 2027-10-31 back.
    #[test]
    fn zoned_hand_offs_keep_their_local_time_across_daylight_saving() {
        let utc = |s: &str| {
            Timestamp::from_millis(s.parse::<jiff::Timestamp>().unwrap().as_millisecond())
        };
        let paris = Some("Europe/Paris");
        // The anchor: the latest 09:00 in Paris before 10:00 Paris time on the 26th.
        let anchor = latest_handoff(utc("2027-03-26T09:00:00Z"), 9 * 60, 0, paris);
        assert_eq!(anchor, utc("2027-03-26T08:00:00Z"));
        // Before 09:00 local, it is yesterday's.
        let earlier = latest_handoff(utc("2027-03-26T07:59:00Z"), 9 * 60, 0, paris);
        assert_eq!(earlier, utc("2027-03-25T08:00:00Z"));
        let r = Rotation {
            members: vec![n("alice"), n("bob"), n("carol")],
            handoff: Handoff::Daily,
            anchor,
            utc_offset_minutes: 0,
            time_zone: Some("Europe/Paris".into()),
        };
        // 27th (winter): 09:00 Paris = 08:00 UTC. 28th, 29th (summer): 07:00 UTC.
        assert_eq!(
            r.shift_at(utc("2027-03-27T07:59:00Z")),
            Some((0, utc("2027-03-27T08:00:00Z")))
        );
        assert_eq!(
            r.shift_at(utc("2027-03-27T08:00:00Z")),
            Some((1, utc("2027-03-28T07:00:00Z")))
        );
        assert_eq!(
            r.shift_at(utc("2027-03-28T07:30:00Z")),
            Some((2, utc("2027-03-29T07:00:00Z")))
        );
        // Seven months on, back in winter: still 09:00 local (08:00 UTC).
        let (_, ends) = r.shift_at(utc("2027-11-02T12:00:00Z")).unwrap();
        assert_eq!(ends, utc("2027-11-03T08:00:00Z"));
        // Weekly shifts too, and a fixed offset does not move.
        let weekly = Rotation {
            handoff: Handoff::Weekly,
            ..r.clone()
        };
        assert_eq!(
            weekly.shift_at(utc("2027-03-30T00:00:00Z")),
            Some((0, utc("2027-04-02T07:00:00Z")))
        );
        let fixed = Rotation {
            time_zone: None,
            utc_offset_minutes: 60,
            ..r
        };
        assert_eq!(
            fixed.shift_at(utc("2027-03-28T07:30:00Z")).unwrap().1,
            utc("2027-03-28T08:00:00Z")
        );
        assert!(parse_time_zone("Mars/Olympus")
            .unwrap_err()
            .contains("IANA"));
        assert_eq!(parse_time_zone("Europe/Paris").unwrap(), "Europe/Paris");
    }

    #[test]
    fn an_override_wins_over_the_rotation() {
        let team = TeamName::parse("payments").unwrap();
        let r = Rotation {
            members: vec![n("alice"), n("bob")],
            handoff: Handoff::Weekly,
            anchor: Timestamp::from_millis(0),
            utc_offset_minutes: 0,
            time_zone: None,
        };
        let o = OncallOverride {
            id: 1,
            member: n("dave"),
            starts_at: Timestamp::from_millis(10 * H),
            ends_at: Timestamp::from_millis(20 * H),
            created_by: None,
        };
        let e = EscalationPolicy::default();
        let now = Timestamp::from_millis(15 * H);
        let oc = on_call(&team, Some(&r), std::slice::from_ref(&o), e.clone(), now);
        assert_eq!(oc.member, Some(n("dave")));
        assert_eq!(oc.source, "override");
        let later = Timestamp::from_millis(21 * H);
        let oc = on_call(&team, Some(&r), &[o], e, later);
        assert_eq!(oc.member, Some(n("alice")));
        assert_eq!(oc.next, Some(n("bob")));
        assert!(oc.overrides.is_empty());
    }

    #[test]
    fn escalation_walks_levels_then_repeats() {
        let level = |d| EscalationLevel {
            delay_secs: d,
            targets: vec![EscalationTarget::Team],
        };
        let p = EscalationPolicy {
            levels: vec![level(0), level(60)],
            repeat: 1,
        };
        assert_eq!(p.next(0, 0), Some((1, 0)));
        assert_eq!(p.next(1, 0), Some((0, 1)));
        assert_eq!(p.next(1, 1), None);
        assert_eq!(
            EscalationTarget::parse("team:platform")
                .unwrap()
                .to_string(),
            "team:platform"
        );
        assert!(EscalationTarget::parse("people:x").is_err());
    }
}
