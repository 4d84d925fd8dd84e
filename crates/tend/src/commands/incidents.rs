//! `tend incidents`, `tend ack`, `tend resolve`.

use anyhow::Result;
use clap::{Args, Subcommand};
use tend_api::{Incident, IncidentDetail};

use crate::cli::Global;
use crate::output::{self, or_dash, print_table, table};

/// `tend incidents`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  tend incidents                 open incidents of your teams
  tend incidents --team payments --all
  tend incidents show 12         alerts, what changed, recent errors, timeline, deliveries
  tend ack 12                    stop the escalation: you are on it
  tend resolve 12")]
pub struct IncidentsArgs {
    #[command(subcommand)]
    pub command: Option<IncidentsCommand>,
    /// Only this team's incidents [default: your teams'; admins: every team's]
    #[arg(long, value_name = "TEAM")]
    pub team: Option<String>,
    /// Include resolved incidents
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Subcommand)]
pub enum IncidentsCommand {
    /// Show one incident with its context, timeline and delivery log
    Show {
        /// Incident number
        id: i64,
    },
}

/// `tend ack ID` / `tend resolve ID`.
#[derive(Debug, Args)]
pub struct IncidentArg {
    /// Incident number (see `tend incidents`)
    pub id: i64,
}

fn age(t: tend_core::Timestamp) -> String {
    let now = tend_core::Timestamp::from_system_time(std::time::SystemTime::now());
    let secs = ((now.as_millis() - t.as_millis()) / 1000).max(0) as u64;
    let d = std::time::Duration::from_secs(if secs > 3600 { secs / 60 * 60 } else { secs });
    humantime::format_duration(d).to_string()
}

fn firing(i: &Incident) -> String {
    let names: Vec<&str> = i
        .alerts
        .iter()
        .filter(|a| a.status == "firing")
        .map(|a| a.name.as_str())
        .collect();
    if names.is_empty() {
        "-".into()
    } else {
        names.join(", ")
    }
}

/// Runs `tend incidents`.
pub async fn run(g: &Global, args: IncidentsArgs) -> Result<()> {
    let client = super::client(g)?;
    match args.command {
        None => {
            let list = client.incidents(args.team.as_deref(), args.all).await?;
            output::print(g.output, &list, |list| {
                if list.is_empty() {
                    println!("no {}incidents", if args.all { "" } else { "open " });
                    return;
                }
                let mut t = table([
                    "id", "state", "severity", "service", "team", "title", "firing", "age",
                ]);
                for i in list {
                    t.add_row(vec![
                        i.id.to_string(),
                        i.state.as_str().to_string(),
                        i.severity.clone(),
                        i.service.clone(),
                        i.team.to_string(),
                        i.title.clone(),
                        firing(i),
                        age(i.opened_at),
                    ]);
                }
                print_table(&t);
            })
        }
        Some(IncidentsCommand::Show { id }) => {
            let d = client.incident(id).await?;
            output::print(g.output, &d, show)
        }
    }
}

fn show(d: &IncidentDetail) {
    let i = &d.incident;
    println!("incident #{}: {}", i.id, i.title);
    println!("state:     {}", i.state.as_str());
    println!("severity:  {}", i.severity);
    println!("service:   {}  (team {})", i.service, i.team);
    println!("opened:    {} ({} ago)", i.opened_at, age(i.opened_at));
    if let Some(t) = i.acked_at {
        println!("acked:     {t} by {}", or_dash(i.acked_by.as_deref()));
    }
    if let Some(t) = i.resolved_at {
        println!(
            "resolved:  {t} {}",
            i.resolved_by
                .as_deref()
                .map(|w| format!("by {w}"))
                .unwrap_or_else(|| "(every alert cleared)".into())
        );
    }
    println!("escalation level: {}", i.escalation_level);
    println!("\nalerts:");
    for a in &i.alerts {
        println!(
            "  {} {} value={} since {}{}",
            a.status,
            a.name,
            crate::commands::incidents::value(a.value),
            a.starts_at,
            a.annotations
                .get("summary")
                .map(|s| format!(" — {s}"))
                .unwrap_or_default()
        );
    }
    let c = &d.context;
    println!("\nwhat changed before it opened:");
    if c.changes.is_empty() {
        println!("  (nothing in the preceding 30 minutes)");
    }
    for e in &c.changes {
        println!(
            "  {} {:<22} {}{}",
            e.time,
            e.kind,
            e.message,
            e.actor
                .as_deref()
                .map(|a| format!(" ({a})"))
                .unwrap_or_default()
        );
    }
    if !c.error_logs.is_empty() {
        println!("\nrecent errors:");
        for l in &c.error_logs {
            println!("  {l}");
        }
    }
    if let Some(rb) = &c.runbook {
        println!("\nrunbook:   {rb}");
    }
    println!("roll back: {}", c.rollback);
    println!("\ntimeline:");
    for e in &d.timeline {
        println!("  {} {:<16} {}", e.time, e.kind, e.detail);
    }
    if !d.deliveries.is_empty() {
        println!("\nnotifications:");
        let mut t = table([
            "#",
            "event",
            "channel",
            "kind",
            "status",
            "attempts",
            "last error",
        ]);
        for n in &d.deliveries {
            t.add_row(vec![
                n.id.to_string(),
                n.event.clone(),
                format!("{}/{}", n.team, n.channel),
                n.kind.clone(),
                n.status.clone(),
                n.attempts.to_string(),
                or_dash(n.last_error.as_deref()),
            ]);
        }
        print_table(&t);
    }
}

/// A value as people read it.
pub fn value(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.4}")
    }
}

/// Runs `tend ack ID`.
pub async fn ack(g: &Global, a: IncidentArg) -> Result<()> {
    let client = super::client(g)?;
    let i = client.ack_incident(a.id).await?;
    output::print(g.output, &i, |i| {
        println!(
            "incident #{} acknowledged by {}: escalation stopped",
            i.id,
            or_dash(i.acked_by.as_deref())
        )
    })
}

/// Runs `tend resolve ID`.
pub async fn resolve(g: &Global, a: IncidentArg) -> Result<()> {
    let client = super::client(g)?;
    let i = client.resolve_incident(a.id).await?;
    output::print(g.output, &i, |i| println!("incident #{} resolved", i.id))
}
