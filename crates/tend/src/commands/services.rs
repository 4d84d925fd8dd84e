//! `tend services` and `tend events`.

use anyhow::Result;
use tend_core::{ServiceName, TeamName};

use crate::cli::{EventsArgs, Global, ServicesArgs, ServicesCommand};
use crate::output::{self, or_dash, print_table, table};

/// Lists, shows or deletes services.
pub async fn run(g: &Global, args: ServicesArgs) -> Result<()> {
    let client = super::client(g)?;
    match args.command.unwrap_or(ServicesCommand::List) {
        ServicesCommand::List => {
            let owner: Option<TeamName> = args
                .owner
                .as_deref()
                .map(|o| super::name("team", o))
                .transpose()?;
            let list = client.services(owner.as_ref()).await?;
            output::print(g.output, &list, |list| {
                if list.is_empty() {
                    println!("no services yet: write a tend.toml and run `tend apply`");
                    return;
                }
                let mut t = table([
                    "name",
                    "owner",
                    "release",
                    "ready",
                    "updated",
                    "description",
                ]);
                for s in list {
                    t.add_row(vec![
                        s.name.to_string(),
                        s.owner.to_string(),
                        s.release
                            .map(|r| format!("v{r}"))
                            .unwrap_or_else(|| "-".into()),
                        format!("{}/{}", s.ready_instances, s.desired_instances),
                        s.updated_at.to_string(),
                        s.description.clone(),
                    ]);
                }
                print_table(&t);
            })
        }
        ServicesCommand::Show { name } => {
            let s = client.service(&name).await?;
            output::print(g.output, &s, |s| {
                println!("name:        {}", s.name);
                println!("owner:       {}", s.owner);
                println!("description: {}", s.description);
                println!("runbook:     {}", or_dash(s.runbook.as_ref()));
                println!("generation:  {}", s.generation);
                println!("created:     {}", s.created_at);
                println!("updated:     {}", s.updated_at);
                println!("instances:   {}", s.spec.run.instances);
                println!("command:     {}", s.spec.run.command);
                println!();
                println!("manifest:");
                for line in s.manifest.lines() {
                    println!("  {line}");
                }
            })
        }
        ServicesCommand::Delete { name } => {
            client.delete_service(&name).await?;
            println!("service/{name} deleted");
            Ok(())
        }
    }
}

/// Prints a service's timeline.
pub async fn events(g: &Global, args: EventsArgs) -> Result<()> {
    let name: ServiceName = super::name("service", &args.name)?;
    let events = super::client(g)?.events(&name, args.limit).await?;
    output::print(g.output, &events, |events| {
        let mut t = table(["time", "kind", "actor", "message"]);
        for e in events {
            t.add_row(vec![
                e.time.to_string(),
                e.kind.clone(),
                or_dash(e.actor.as_ref()),
                e.message.clone(),
            ]);
        }
        print_table(&t);
    })
}
