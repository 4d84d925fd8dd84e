//! `tend demo`: a platform with example teams and services, ready to explore.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use owo_colors::OwoColorize;
use serde::Deserialize;
use tend_api::CreateToken;
use tend_client::Client;
use tend_core::{TeamName, TokenName};
use tend_server::{Server, ServerConfig, DEFAULT_BODY_LIMIT};

use crate::cli::DemoArgs;
use crate::output;

/// `examples/teams.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TeamsFile {
    #[serde(rename = "team")]
    teams: Vec<DemoTeam>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DemoTeam {
    name: TeamName,
    #[serde(default)]
    members: Vec<TokenName>,
}

fn examples_dir(arg: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(dir) = arg {
        return Ok(dir);
    }
    let candidates = [
        PathBuf::from("examples"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples"),
    ];
    candidates
        .into_iter()
        .find(|p| p.join("teams.toml").is_file())
        .context("cannot find the examples (examples/teams.toml); pass --examples DIR")
}

/// Starts the server, loads the examples through the API, prints a tour, and
/// serves until Ctrl-C (or exits at once with `--exit`).
pub async fn run(args: DemoArgs) -> Result<()> {
    let examples = examples_dir(args.examples)?;
    let (_tmp, data_dir) = match args.data_dir {
        Some(d) => (None, d),
        None => {
            let tmp = tempfile::Builder::new()
                .prefix("tend-demo-")
                .tempdir()
                .context("cannot create a temporary data directory")?;
            let path = tmp.path().to_path_buf();
            (Some(tmp), path)
        }
    };
    let config = ServerConfig {
        data_dir: data_dir.clone(),
        listen: args.listen,
        router_listen: args.router_listen,
        body_limit: DEFAULT_BODY_LIMIT,
    };
    let server = Server::bind(&config).await.context(
        "cannot start the demo server (is another tend running? try `tend demo --listen 127.0.0.1:0`)",
    )?;
    let addr = server.local_addr()?;
    let admin_token = match server.bootstrap_token.clone() {
        Some(t) => t,
        None => std::fs::read_to_string(data_dir.join(tend_server::ADMIN_TOKEN_FILE))
            .context("this data directory was set up before; its admin.token is missing")?
            .trim()
            .to_string(),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async {
        let _ = stop_rx.await;
    }));

    let url = format!("http://{addr}");
    let admin = Client::new(&url, Some(admin_token.clone()))?;
    let member_tokens = load_examples(&admin, &examples).await?;
    print_tour(&url, &data_dir, &admin_token, &member_tokens);

    if !args.exit {
        crate::commands::server::shutdown_signal().await;
    }
    let _ = stop_tx.send(());
    serving.await??;
    Ok(())
}

async fn load_examples(admin: &Client, examples: &Path) -> Result<Vec<(TokenName, String)>> {
    let teams_path = examples.join("teams.toml");
    let text = std::fs::read_to_string(&teams_path)
        .with_context(|| format!("cannot read {}", teams_path.display()))?;
    let file: TeamsFile =
        toml::from_str(&text).with_context(|| format!("invalid {}", teams_path.display()))?;
    let existing = admin.teams().await?;
    let mut tokens = Vec::new();
    for team in &file.teams {
        if existing.iter().any(|t| t.name == team.name) {
            continue;
        }
        admin.create_team(&team.name).await?;
        for member in &team.members {
            let created = admin
                .create_token(&CreateToken {
                    name: member.clone(),
                    teams: vec![team.name.clone()],
                    admin: false,
                    expires_in: None,
                })
                .await?;
            tokens.push((member.clone(), created.token));
        }
    }
    let services_dir = examples.join("services");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&services_dir)
        .with_context(|| format!("cannot read {}", services_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("tend.toml").is_file())
        .collect();
    dirs.sort();
    for dir in dirs {
        let loaded = tend_manifest::load(&dir)
            .map_err(|e| anyhow::anyhow!("example {}: {e}", dir.display()))?;
        admin
            .apply(&loaded.source, &loaded.path.display().to_string())
            .await?;
    }
    Ok(tokens)
}

fn print_tour(url: &str, data_dir: &Path, admin_token: &str, members: &[(TokenName, String)]) {
    let color = output::color_stdout();
    let h = |s: &str| {
        if color {
            s.bold().to_string()
        } else {
            s.to_string()
        }
    };
    println!("{}", h("tend demo is running"));
    println!();
    println!("  API:        {url}   (health: {url}/healthz, spec: {url}/api/v1/openapi.json)");
    println!("  data:       {}", data_dir.display());
    println!("  admin:      {admin_token}");
    for (name, token) in members {
        println!("  {:<11} {token}", format!("{name}:"));
    }
    println!();
    println!("{}", h("Try, in another terminal:"));
    println!("  export TEND_URL={url} TEND_TOKEN={admin_token}");
    println!("  tend services                 # the catalog: who owns what");
    println!("  tend teams show payments      # members, channels, services");
    println!("  tend audit                    # who did what, from where");
    if let Some((name, token)) = members.first() {
        println!("  TEND_TOKEN={token} tend whoami   # you as `{name}`");
    }
    println!();
    println!("Press Ctrl-C to stop.");
}
