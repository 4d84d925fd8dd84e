//! `tend demo`: a platform with example teams and services, ready to explore.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use owo_colors::OwoColorize;
use serde::Deserialize;
use tend_api::{CreateToken, SetRotation};
use tend_client::Client;
use tend_core::{TeamName, TokenName};
use tend_deploy::pack;
use tend_server::{Server, ServerConfig};

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
    let config = ServerConfig::new(data_dir.clone(), args.listen, args.router_listen);
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
    let stage_dir = data_dir.join("demo-services");
    let member_tokens = load_examples(&admin, &examples, &stage_dir).await?;
    let mut urls = Vec::new();
    for s in admin.services(None).await? {
        if let Ok(st) = admin.status(s.name.as_str()).await {
            urls.push((s.name.to_string(), st.urls));
        }
    }
    print_tour(
        &url,
        &data_dir,
        &admin_token,
        &member_tokens,
        &urls,
        &stage_dir,
    );

    if !args.exit {
        crate::commands::server::shutdown_signal().await;
    }
    // A demo leaves nothing running behind it (a real server would: instances
    // outlive the daemon by design).
    println!("stopping the demo's services ...");
    for s in admin.services(None).await? {
        admin.set_stopped(s.name.as_str(), true).await?;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let mut running = 0;
        for s in admin.services(None).await? {
            running += admin.status(s.name.as_str()).await?.instances.len();
        }
        if running == 0 || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = stop_tx.send(());
    serving.await??;
    Ok(())
}

/// The sample app's binary: next to this binary (both are built by
/// `cargo build`), else built now from the source tree.
fn sample_app_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the tend binary")?;
    let beside = exe.with_file_name("tend-sample-app");
    if beside.is_file() {
        return Ok(beside);
    }
    let profile_release = exe
        .parent()
        .and_then(|p| p.file_name())
        .is_some_and(|n| n == "release");
    eprintln!("building the sample app (once) ...");
    let mut cmd =
        std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args(["build", "--quiet", "--bin", "tend-sample-app"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_release {
        cmd.arg("--release");
    }
    let status = cmd
        .status()
        .context("cannot run cargo to build the sample app")?;
    if !status.success() || !beside.is_file() {
        anyhow::bail!(
            "could not build the sample app: run `cargo build --release --bin tend-sample-app`"
        );
    }
    Ok(beside)
}

async fn load_examples(
    admin: &Client,
    examples: &Path,
    stage_dir: &Path,
) -> Result<Vec<(TokenName, String)>> {
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
        if !team.members.is_empty() {
            // Someone on call, so `tend oncall` and the pages name a person.
            admin
                .set_rotation(
                    team.name.as_str(),
                    &SetRotation {
                        members: team.members.clone(),
                        handoff: tend_core::incident::Handoff::Weekly,
                        handoff_time: None,
                        utc_offset: None,
                        time_zone: Some("UTC".into()),
                    },
                )
                .await?;
        }
    }
    let services_dir = examples.join("services");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&services_dir)
        .with_context(|| format!("cannot read {}", services_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("tend.toml").is_file())
        .collect();
    dirs.sort();
    let sample_app = sample_app_binary()?;
    // Deploy every example at once: each one's verification window runs in parallel.
    let mut deploys = tokio::task::JoinSet::new();
    for dir in dirs {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // A service directory as a build would leave it: the manifest and the
        // program it runs (here, the sample app).
        let staged = stage_dir.join(&name);
        std::fs::create_dir_all(&staged)
            .with_context(|| format!("cannot create {}", staged.display()))?;
        std::fs::copy(dir.join("tend.toml"), staged.join("tend.toml"))?;
        std::fs::copy(&sample_app, staged.join("sample-app"))
            .with_context(|| format!("cannot copy {}", sample_app.display()))?;
        let archive = pack::pack(&staged, pack::DEFAULT_MAX_BYTES)?;
        let client = admin.clone();
        deploys.spawn(async move {
            let d = client.deploy_archive(&name, archive).await?;
            let fin = client.watch(d.id, |_| {}).await?;
            Ok::<_, anyhow::Error>((name, fin))
        });
    }
    while let Some(done) = deploys.join_next().await {
        let (name, fin) = done??;
        let state = crate::output::api_name(&fin.state);
        println!(
            "  deployed {name:<10} v{} {state}",
            fin.release
                .map(|r| r.to_string())
                .unwrap_or_else(|| "?".into())
        );
    }
    Ok(tokens)
}

fn print_tour(
    url: &str,
    data_dir: &Path,
    admin_token: &str,
    members: &[(TokenName, String)],
    services: &[(String, Vec<String>)],
    stage_dir: &Path,
) {
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
    println!("  dashboard:  {url}/ui   (log in with a token below)");
    println!("  data:       {}", data_dir.display());
    println!("  admin:      {admin_token}");
    for (name, token) in members {
        println!("  {:<11} {token}", format!("{name}:"));
    }
    println!();
    println!("{}", h("Services (through the router):"));
    for (name, urls) in services {
        println!("  {name:<10} {}", urls.join("  "));
    }
    println!();
    println!("{}", h("Try, in another terminal:"));
    println!("  export TEND_URL={url} TEND_TOKEN={admin_token}");
    println!("  tend services                 # the catalog: who owns what");
    println!("  tend teams show payments      # members, channels, services");
    println!("  tend audit                    # who did what, from where");
    println!("  tend status checkout          # release, instances, health, restarts");
    println!();
    println!(
        "{}",
        h("Break one and watch it roll back (v1 keeps serving):")
    );
    let ledger = stage_dir.join("ledger");
    println!(
        "  echo 'SAMPLE_CRASH_AT_BOOT = \"1\"' >> {}/tend.toml && tend deploy {}",
        ledger.display(),
        ledger.display()
    );
    println!("  tend incidents                # the failed deploy is an incident for its owner, with what changed");
    println!("  tend oncall                   # who is on call for each team");
    if let Some((name, token)) = members.first() {
        println!("  TEND_TOKEN={token} tend whoami   # you as `{name}`");
    }
    println!();
    println!("Press Ctrl-C to stop.");
}
