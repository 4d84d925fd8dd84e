//! `tend login` and `tend whoami`.

use std::io::{BufRead, IsTerminal};

use anyhow::{Context, Result};
use tend_client::Client;

use crate::cli::Global;
use crate::output;
use crate::profile::{self, Config};

/// Checks the URL and token against the server, then saves them.
pub async fn run(g: &Global) -> Result<()> {
    let url = super::server_url(g, &profile::load()?);
    let token = match &g.token {
        Some(t) => t.clone(),
        None => {
            if std::io::stdin().is_terminal() {
                eprint!("token for {url}: ");
            }
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("cannot read the token from standard input")?;
            line.trim().to_string()
        }
    };
    if token.is_empty() {
        anyhow::bail!("no token given: pass --token, set TEND_TOKEN, or type it on standard input");
    }
    let client = Client::new(&url, Some(token.clone()))?;
    let me = client.whoami().await?;
    let path = profile::save(&Config {
        url: Some(url.clone()),
        token: Some(token),
    })?;
    println!(
        "logged in to {url} as `{}`{}; saved to {}",
        me.name,
        if me.admin { " (admin)" } else { "" },
        path.display()
    );
    Ok(())
}

/// Prints the caller's identity.
pub async fn whoami(g: &Global) -> Result<()> {
    let me = super::client(g)?.whoami().await?;
    output::print(g.output, &me, |me| {
        println!("name:  {}", me.name);
        println!("admin: {}", me.admin);
        println!(
            "teams: {}",
            if me.teams.is_empty() {
                "-".to_string()
            } else {
                me.teams
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
    })
}
