//! `tend oncall`: who is on call, and the team's rotation, overrides and
//! escalation policy.

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use tend_api::{AddOverride, Handoff, OnCall, SetEscalation, SetEscalationLevel, SetRotation};
use tend_core::{Timestamp, TokenName};

use crate::cli::Global;
use crate::output::{self, or_dash, print_table, table};

/// `tend oncall`.
#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "\
Examples:
  tend oncall                      who is on call for each of your teams
  tend oncall payments             who is on call, until when, who is next, escalation
  tend oncall rotation payments --members alice,bob,carol --handoff weekly --at 09:00 --time-zone Europe/Paris
  tend oncall override payments --member dave --for 8h
  tend oncall escalation payments --level 0s=oncall --level 15m=team --level 30m=team:platform --repeat 1

Escalation targets: `oncall` (the channels of the member on call, added with
`tend teams channels add --member`; the team's shared channels if they have
none), `team` (every channel of the team), `channel:NAME` (one of its
channels), `team:NAME` (every channel of another team). `page` incidents walk
the levels until someone runs `tend ack`; `ticket` and `info` incidents go to
the team's shared channels once, without paging."
)]
pub struct OncallArgs {
    /// Team [default: each of your teams]
    pub team: Option<String>,
    #[command(subcommand)]
    pub command: Option<OncallCommand>,
}

#[derive(Debug, Subcommand)]
pub enum OncallCommand {
    /// Set a team's rotation: members take turns, in order
    Rotation {
        /// Team name
        team: String,
        /// Members in turn order, comma-separated (token names of the team)
        #[arg(long, value_delimiter = ',', required = true)]
        members: Vec<String>,
        /// How often the duty passes on
        #[arg(long, value_enum, default_value_t = HandoffArg::Weekly)]
        handoff: HandoffArg,
        /// Local hand-off time, HH:MM
        #[arg(long, default_value = "09:00", value_name = "HH:MM")]
        at: String,
        /// The team's time zone, an IANA name (e.g. Europe/Paris): hand-offs
        /// keep their local time across daylight-saving changes
        #[arg(long, value_name = "ZONE", conflicts_with = "utc_offset")]
        time_zone: Option<String>,
        /// Or a fixed offset from UTC, e.g. +01:00 or -05:00 [default: +00:00]
        #[arg(long, value_name = "OFFSET", allow_hyphen_values = true)]
        utc_offset: Option<String>,
        /// Remove the rotation instead
        #[arg(long, conflicts_with_all = ["members"])]
        remove: bool,
    },
    /// Put someone on call for a while, over the rotation
    Override {
        /// Team name
        team: String,
        /// Who takes the duty
        #[arg(long)]
        member: String,
        /// For how long from now, e.g. 8h
        #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
    },
    /// Remove an override (its number is in `tend oncall TEAM`)
    RemoveOverride {
        /// Team name
        team: String,
        /// Override number
        id: i64,
    },
    /// Set how a team's pages escalate while nobody acknowledges them
    Escalation {
        /// Team name
        team: String,
        /// A level as DELAY=TARGET[,TARGET...], in order; DELAY counts from the previous level
        #[arg(long = "level", value_name = "DELAY=TARGETS", required = true)]
        levels: Vec<String>,
        /// Times the whole policy repeats after its last level
        #[arg(long, default_value_t = 0)]
        repeat: u32,
    },
}

/// Hand-off periods on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum HandoffArg {
    Daily,
    Weekly,
}

fn show(oc: &OnCall) {
    println!("team:     {}", oc.team);
    match &oc.member {
        Some(m) => println!("on call:  {m} ({}, until {})", oc.source, or_dash(oc.until)),
        None => println!("on call:  nobody (no rotation; pages go to the team's channels)"),
    }
    if let Some(n) = &oc.next {
        println!("next:     {n}");
    }
    if let Some(r) = &oc.rotation {
        let zone = r.time_zone.clone().unwrap_or_else(|| {
            let sign = if r.utc_offset_minutes < 0 { '-' } else { '+' };
            let off = r.utc_offset_minutes.abs();
            format!("UTC{sign}{:02}:{:02}", off / 60, off % 60)
        });
        println!(
            "rotation: {} {} ({zone})",
            r.handoff.as_str(),
            r.members
                .iter()
                .map(|m| m.to_string())
                .collect::<Vec<_>>()
                .join(" → "),
        );
    }
    for o in &oc.overrides {
        println!(
            "override #{}: {} from {} until {}",
            o.id, o.member, o.starts_at, o.ends_at
        );
    }
    println!("escalation (repeat {}):", oc.escalation.repeat);
    for (i, l) in oc.escalation.levels.iter().enumerate() {
        println!(
            "  {}. after {}: {}",
            i + 1,
            humantime::format_duration(std::time::Duration::from_secs(l.delay_secs)),
            l.targets
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

/// Runs `tend oncall`.
pub async fn run(g: &Global, args: OncallArgs) -> Result<()> {
    let client = super::client(g)?;
    match args.command {
        None => {
            let teams: Vec<String> = match args.team {
                Some(t) => vec![t],
                None => {
                    let me = client.whoami().await?;
                    if me.teams.is_empty() {
                        client
                            .teams()
                            .await?
                            .into_iter()
                            .map(|t| t.name.to_string())
                            .collect()
                    } else {
                        me.teams.into_iter().map(|t| t.to_string()).collect()
                    }
                }
            };
            let mut all = Vec::new();
            for t in &teams {
                all.push(client.oncall(t).await?);
            }
            output::print(g.output, &all, |all| {
                if let [one] = all.as_slice() {
                    return show(one);
                }
                let mut t = table(["team", "on call", "until", "next"]);
                for oc in all {
                    t.add_row(vec![
                        oc.team.to_string(),
                        or_dash(oc.member.as_ref()),
                        or_dash(oc.until),
                        or_dash(oc.next.as_ref()),
                    ]);
                }
                print_table(&t);
            })
        }
        Some(OncallCommand::Rotation {
            team,
            members,
            handoff,
            at,
            time_zone,
            utc_offset,
            remove,
        }) => {
            if remove {
                client.remove_rotation(&team).await?;
                println!("rotation of team/{team} removed");
                return Ok(());
            }
            let members = members
                .iter()
                .map(|m| super::name::<TokenName>("member", m.trim()))
                .collect::<Result<Vec<_>>>()?;
            let oc = client
                .set_rotation(
                    &team,
                    &SetRotation {
                        members,
                        handoff: match handoff {
                            HandoffArg::Daily => Handoff::Daily,
                            HandoffArg::Weekly => Handoff::Weekly,
                        },
                        handoff_time: Some(at),
                        utc_offset,
                        time_zone,
                    },
                )
                .await?;
            output::print(g.output, &oc, show)
        }
        Some(OncallCommand::Override {
            team,
            member,
            duration,
        }) => {
            let now = Timestamp::from_system_time(std::time::SystemTime::now());
            let oc = client
                .add_override(
                    &team,
                    &AddOverride {
                        member: super::name("member", &member)?,
                        starts_at: Some(now),
                        ends_at: now.saturating_add(duration),
                    },
                )
                .await?;
            output::print(g.output, &oc, show)
        }
        Some(OncallCommand::RemoveOverride { team, id }) => {
            client.remove_override(&team, id).await?;
            println!("override #{id} of team/{team} removed");
            Ok(())
        }
        Some(OncallCommand::Escalation {
            team,
            levels,
            repeat,
        }) => {
            let levels = levels
                .iter()
                .map(|l| {
                    let (after, targets) = l.split_once('=').with_context(|| {
                        format!("level {l:?} must look like DELAY=TARGETS, e.g. 15m=team")
                    })?;
                    Ok(SetEscalationLevel {
                        after: after.trim().to_string(),
                        notify: targets.split(',').map(|t| t.trim().to_string()).collect(),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let oc = client
                .set_escalation(&team, &SetEscalation { levels, repeat })
                .await?;
            output::print(g.output, &oc, show)
        }
    }
}
