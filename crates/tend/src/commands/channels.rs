//! `tend teams channels`: where a team's notifications go.

use anyhow::Result;
use clap::{ArgGroup, Args, Subcommand};
use tend_api::AddChannel;
use tend_core::model::ChannelKind;

use crate::cli::Global;
use crate::output::{self, print_table, table};

/// `tend teams channels`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  tend teams channels add payments --webhook https://hooks.example/alerts
  tend teams channels add payments --slack https://hooks.slack.com/services/T/B/X --name ops-slack
  tend teams channels add payments --pagerduty R0UTINGKEY --name pager
  tend teams channels add payments --email alice@example.com --name alice-mail --member alice
  tend teams channels list payments
  tend teams channels remove payments ops-slack

Webhooks get the Alertmanager webhook payload (version 4), so existing
receivers work; Slack gets a message with blocks; PagerDuty gets Events API v2
trigger/acknowledge/resolve events. A channel with --member is that person's
own: the escalation target `oncall` reaches the channels of whoever is on call
(see `tend oncall escalation --help`).")]
pub struct ChannelsArgs {
    #[command(subcommand)]
    pub command: ChannelsCommand,
}

#[derive(Debug, Subcommand)]
pub enum ChannelsCommand {
    /// Add a channel: one of --webhook, --slack, --pagerduty, --email
    #[command(group(ArgGroup::new("kind").required(true).args(["webhook", "slack", "pagerduty", "email"])))]
    Add {
        /// Team name
        team: String,
        /// Channel name [default: the kind, e.g. `slack`]
        #[arg(long)]
        name: Option<String>,
        /// A URL that gets Alertmanager-format JSON POSTs
        #[arg(long, value_name = "URL")]
        webhook: Option<String>,
        /// A Slack incoming-webhook URL
        #[arg(long, value_name = "URL")]
        slack: Option<String>,
        /// A PagerDuty Events API v2 routing (integration) key
        #[arg(long, value_name = "KEY")]
        pagerduty: Option<String>,
        /// An e-mail address
        #[arg(long, value_name = "ADDR")]
        email: Option<String>,
        /// The team member this channel reaches (token name), for the `oncall` escalation target
        #[arg(long, value_name = "NAME")]
        member: Option<String>,
    },
    /// List a team's channels
    List {
        /// Team name
        team: String,
    },
    /// Remove a channel
    Remove {
        /// Team name
        team: String,
        /// Channel name
        name: String,
    },
}

/// Runs `tend teams channels`.
pub async fn run(g: &Global, args: ChannelsArgs) -> Result<()> {
    let client = super::client(g)?;
    match args.command {
        ChannelsCommand::Add {
            team,
            name,
            webhook,
            slack,
            pagerduty,
            email,
            member,
        } => {
            let (kind, target) = match (webhook, slack, pagerduty, email) {
                (Some(u), ..) => (ChannelKind::Webhook, u),
                (_, Some(u), ..) => (ChannelKind::Slack, u),
                (_, _, Some(k), _) => (ChannelKind::Pagerduty, k),
                (.., Some(a)) => (ChannelKind::Email, a),
                _ => anyhow::bail!("give one of --webhook, --slack, --pagerduty or --email"),
            };
            if matches!(kind, ChannelKind::Webhook | ChannelKind::Slack)
                && !(target.starts_with("http://") || target.starts_with("https://"))
            {
                anyhow::bail!("{} needs an http(s) URL, got {target:?}", kind.as_str());
            }
            let name = name.unwrap_or_else(|| kind.as_str().to_string());
            let t = client
                .add_channel(
                    &team,
                    &AddChannel {
                        name: super::name("channel", &name)?,
                        kind,
                        target,
                        member: member
                            .as_deref()
                            .map(|m| super::name("member", m))
                            .transpose()?,
                    },
                )
                .await?;
            output::print(g.output, &t, |t| {
                println!(
                    "channel `{name}` ({}) added to team/{}",
                    kind.as_str(),
                    t.name
                )
            })
        }
        ChannelsCommand::List { team } => {
            let t = client.team(&team).await?;
            output::print(g.output, &t.channels, |channels| {
                if channels.is_empty() {
                    println!("team/{team} has no channels; add one with `tend teams channels add`");
                    return;
                }
                let mut tb = table(["name", "kind", "member", "target"]);
                for c in channels {
                    tb.add_row(vec![
                        c.name.to_string(),
                        c.kind.as_str().to_string(),
                        c.member
                            .as_ref()
                            .map_or_else(|| "(team)".to_string(), |m| m.to_string()),
                        c.target.clone(),
                    ]);
                }
                print_table(&tb);
            })
        }
        ChannelsCommand::Remove { team, name } => {
            client.remove_channel(&team, &name).await?;
            println!("channel `{name}` removed from team/{team}");
            Ok(())
        }
    }
}
