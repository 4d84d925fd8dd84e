//! `tend teams`.

use anyhow::Result;
use tend_api::{AddChannel, Team};
use tend_core::{TeamName, TokenName};

use crate::cli::{Global, TeamsArgs, TeamsCommand};
use crate::output::{self, print_table, table};

fn list_or_dash<T: AsRef<str>>(items: &[T]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items
            .iter()
            .map(|i| i.as_ref())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn show(team: &Team) {
    println!("name:     {}", team.name);
    println!("created:  {}", team.created_at);
    println!("members:  {}", list_or_dash(&team.members));
    println!("services: {}", list_or_dash(&team.services));
    if team.channels.is_empty() {
        println!("channels: -");
    } else {
        println!("channels:");
        for c in &team.channels {
            println!("  {} ({}): {}", c.name, c.kind.as_str(), c.target);
        }
    }
}

/// Runs a teams command.
pub async fn run(g: &Global, args: TeamsArgs) -> Result<()> {
    let client = super::client(g)?;
    match args.command.unwrap_or(TeamsCommand::List) {
        TeamsCommand::List => {
            let teams = client.teams().await?;
            output::print(g.output, &teams, |teams| {
                let mut t = table(["name", "members", "services", "channels"]);
                for team in teams {
                    t.add_row(vec![
                        team.name.to_string(),
                        team.members.len().to_string(),
                        list_or_dash(&team.services),
                        team.channels.len().to_string(),
                    ]);
                }
                print_table(&t);
            })
        }
        TeamsCommand::Create { name } => {
            let name: TeamName = super::name("team", &name)?;
            let team = client.create_team(&name).await?;
            output::print(g.output, &team, |t| println!("team/{} created", t.name))
        }
        TeamsCommand::Show { name } => {
            let team = client.team(&name).await?;
            output::print(g.output, &team, show)
        }
        TeamsCommand::Delete { name } => {
            client.delete_team(&name).await?;
            println!("team/{name} deleted");
            Ok(())
        }
        TeamsCommand::AddChannel {
            team,
            name,
            kind,
            target,
        } => {
            let channel_name: TokenName = super::name("channel", &name)?;
            let t = client
                .add_channel(
                    &team,
                    &AddChannel {
                        name: channel_name,
                        kind: kind.into(),
                        target,
                        member: None,
                    },
                )
                .await?;
            output::print(g.output, &t, |t| {
                println!("channel `{name}` added to team/{}", t.name)
            })
        }
        TeamsCommand::Channels(args) => super::channels::run(g, args).await,
        TeamsCommand::RemoveChannel { team, name } => {
            client.remove_channel(&team, &name).await?;
            println!("channel `{name}` removed from team/{team}");
            Ok(())
        }
    }
}
