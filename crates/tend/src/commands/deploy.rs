//! `tend deploy`, `status`, `releases`, `rollback`, `scale`, `restart`, `stop`, `start`.

use std::io::IsTerminal;
use std::time::SystemTime;

use anyhow::{Context, Result};
use owo_colors::OwoColorize;
use tend_api::{Deployment, DeploymentState, ServiceStatus, WatchEvent};
use tend_client::Client;
use tend_core::Timestamp;
use tend_deploy::pack;

use crate::cli::{DeployArgs, Global, Output, RollbackArgs, ScaleArgs, WaitArgs};
use crate::output::{self, or_dash, print_table, table};
use crate::{exit, Reported};

/// Packs and uploads a service directory (or picks a release), then follows
/// the rollout; exits 0 only when the new release serves.
pub async fn deploy(g: &Global, args: DeployArgs) -> Result<()> {
    let client = super::client(g)?;
    let deployment = if let Some(version) = args.release {
        let path = tend_manifest::resolve_path(&args.path).ok();
        let name = match (path, &args.path) {
            (Some(p), _) => tend_manifest::load(&p)
                .map(|l| l.spec.name().to_string())
                .map_err(|e| anyhow::anyhow!("{e}"))?,
            _ => anyhow::bail!("cannot tell which service to deploy: give the service's directory"),
        };
        client.deploy_release(&name, version).await?
    } else {
        let loaded = match tend_manifest::load(&args.path) {
            Ok(l) => l,
            Err(tend_manifest::LoadError::Invalid(diag)) => {
                eprint!("{}", diag.render(output::color_stderr()));
                return Err(Reported(exit::ERROR).into());
            }
            Err(e) => return Err(e.into()),
        };
        let dir = loaded
            .path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    std::path::Path::new(".")
                } else {
                    p
                }
            })
            .context("the manifest has no directory")?
            .to_path_buf();
        let name = loaded.spec.name().to_string();
        note(g, &format!("packing {}", dir.display()));
        let archive =
            tokio::task::spawn_blocking(move || pack::pack(&dir, pack::DEFAULT_MAX_BYTES))
                .await??;
        note(
            g,
            &format!(
                "uploading {} to {}",
                human_bytes(archive.len() as u64),
                client.base_url()
            ),
        );
        match client.deploy_archive(&name, archive).await {
            Ok(d) => d,
            Err(tend_client::ClientError::Api { body, .. })
                if body.error.code == "invalid_manifest" =>
            {
                eprintln!("{}", body.error.message);
                return Err(Reported(exit::ERROR).into());
            }
            Err(e) => return Err(e.into()),
        }
    };
    follow(g, &client, deployment, args.detach).await
}

/// Prints progress for people on stderr (stdout stays clean for `-o json`).
fn note(g: &Global, msg: &str) {
    if g.output == Output::Table {
        eprintln!("{msg}");
    }
}

fn human_bytes(n: u64) -> String {
    if n >= 1024 * 1024 {
        format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
    } else {
        format!("{:.1} KiB", n as f64 / 1024.0)
    }
}

/// Follows a deployment to its end, printing build output and steps; exits
/// non-zero (with the reason) unless it succeeded.
pub async fn follow(g: &Global, client: &Client, d: Deployment, detach: bool) -> Result<()> {
    let kind = output::api_name(&d.kind);
    note(
        g,
        &format!("deployment #{} ({kind}) of {} started", d.id, d.service),
    );
    if detach {
        return output::print(g.output, &d, |d| {
            println!("follow it with: tend status {}", d.service);
        });
    }
    let color = output::color_stderr();
    let human = g.output == Output::Table;
    // On a terminal, a spinner shows the current step; elsewhere (CI logs,
    // pipes) every line is printed plainly as it comes.
    let spinner = (human && std::io::stderr().is_terminal()).then(|| {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.enable_steady_tick(std::time::Duration::from_millis(100));
        pb.set_message("waiting for the server");
        pb
    });
    let say = |line: String| match &spinner {
        Some(pb) => pb.println(line),
        None => eprintln!("{line}"),
    };
    let started = SystemTime::now();
    let fin = client
        .watch(d.id, |ev| {
            if !human {
                return;
            }
            match ev {
                WatchEvent::Log { line } => {
                    let bar = if color {
                        "│".dimmed().to_string()
                    } else {
                        "|".to_string()
                    };
                    say(format!("  {bar} {line}"));
                }
                WatchEvent::Step { step } => {
                    let elapsed = elapsed_since(started, step.at);
                    let name = if color {
                        step.step.bold().to_string()
                    } else {
                        step.step.clone()
                    };
                    if step.detail.is_empty() {
                        say(format!("{elapsed:>7} {name}"));
                    } else {
                        say(format!("{elapsed:>7} {name}: {}", step.detail));
                    }
                    if let Some(pb) = &spinner {
                        pb.set_message(step.step.replace('_', " "));
                    }
                }
                WatchEvent::End { .. } => {}
            }
        })
        .await;
    if let Some(pb) = &spinner {
        pb.finish_and_clear();
    }
    let fin = fin?;
    let ok = fin.state == DeploymentState::Succeeded;
    if g.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&fin)?);
    } else if ok {
        let status = client.status(&fin.service).await.ok();
        let urls = status.map(|s| s.urls.join("  ")).unwrap_or_default();
        let done = if color {
            "done".green().bold().to_string()
        } else {
            "done".into()
        };
        println!(
            "{done}: {} v{} serves {urls}",
            fin.service,
            fin.release
                .map(|r| r.to_string())
                .unwrap_or_else(|| "?".into())
        );
    } else {
        let word = match fin.state {
            DeploymentState::RolledBack => "rolled back",
            DeploymentState::Superseded => "superseded",
            _ => "failed",
        };
        let head = format!("deployment #{} {word}", fin.id);
        let head = if color {
            head.red().bold().to_string()
        } else {
            head
        };
        eprintln!("{head}");
        if let Some(reason) = &fin.reason {
            for line in reason.lines() {
                eprintln!("  {line}");
            }
        }
        if fin.state == DeploymentState::RolledBack {
            eprintln!(
                "the previous release keeps serving; see `tend status {}` and `tend events {}`",
                fin.service, fin.service
            );
        }
    }
    if ok {
        Ok(())
    } else {
        Err(Reported(exit::ERROR).into())
    }
}

fn elapsed_since(start: SystemTime, at: Timestamp) -> String {
    let secs = at
        .to_system_time()
        .duration_since(start)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    format!("{secs:.1}s")
}

/// `tend status NAME`.
pub async fn status(g: &Global, name: &str) -> Result<()> {
    let s = super::client(g)?.status(name).await?;
    output::print(g.output, &s, print_status)
}

fn print_status(s: &ServiceStatus) {
    println!("service:   {} (owner `{}`)", s.name, s.owner);
    println!(
        "release:   {}{}",
        s.release
            .map(|r| format!("v{r}"))
            .unwrap_or_else(|| "none yet (tend deploy)".into()),
        if s.stopped { "  [stopped]" } else { "" }
    );
    println!(
        "instances: {}/{} ready",
        s.ready_instances, s.desired_instances
    );
    for u in &s.urls {
        println!("url:       {u}");
    }
    if let Some(d) = &s.deployment {
        println!(
            "last deployment: #{} {} v{} {}{}",
            d.id,
            output::api_name(&d.kind),
            or_dash(d.release),
            output::api_name(&d.state),
            d.reason
                .as_deref()
                .and_then(|r| r.lines().next())
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
    }
    if !s.instances.is_empty() {
        println!();
        let now = Timestamp::from_system_time(SystemTime::now());
        let mut t = table([
            "instance",
            "release",
            "state",
            "pid",
            "port",
            "restarts",
            "uptime",
            "last exit",
        ]);
        for i in &s.instances {
            let uptime = i.started_at.filter(|_| i.pid.is_some()).map(|st| {
                humantime::format_duration(std::time::Duration::from_secs(
                    ((now.as_millis() - st.as_millis()).max(0) / 1000) as u64,
                ))
                .to_string()
            });
            t.add_row(vec![
                i.id.clone(),
                format!("v{}", i.release),
                i.state.as_str().to_string(),
                or_dash(i.pid),
                i.port.to_string(),
                i.restarts.to_string(),
                or_dash(uptime),
                or_dash(i.last_exit.as_ref()),
            ]);
        }
        print_table(&t);
    }
}

/// `tend releases NAME`.
pub async fn releases(g: &Global, name: &str) -> Result<()> {
    let client = super::client(g)?;
    let list = client.releases(name).await?;
    let current = client.status(name).await?.release;
    output::print(g.output, &list, |list| {
        let mut t = table(["release", "", "created", "by", "artifact", "description"]);
        for r in list {
            t.add_row(vec![
                format!("v{}", r.version),
                if Some(r.version) == current {
                    "current".into()
                } else {
                    String::new()
                },
                r.created_at.to_string(),
                or_dash(r.created_by.as_ref()),
                r.artifact.chars().take(12).collect(),
                r.description.clone(),
            ]);
        }
        print_table(&t);
    })
}

/// `tend rollback NAME [--to vN]`.
pub async fn rollback(g: &Global, args: RollbackArgs) -> Result<()> {
    let client = super::client(g)?;
    let d = client.rollback(&args.name, args.to).await?;
    follow(g, &client, d, args.detach).await
}

/// `tend restart NAME`.
pub async fn restart(g: &Global, args: WaitArgs) -> Result<()> {
    let client = super::client(g)?;
    let d = client.restart(&args.name).await?;
    follow(g, &client, d, args.detach).await
}

/// `tend scale NAME N`.
pub async fn scale(g: &Global, args: ScaleArgs) -> Result<()> {
    let s = super::client(g)?.scale(&args.name, args.instances).await?;
    output::print(g.output, &s, |s| {
        println!("{} scaled to {} instance(s)", s.name, s.desired_instances)
    })
}

/// `tend stop NAME` / `tend start NAME`.
pub async fn set_stopped(g: &Global, name: &str, stopped: bool) -> Result<()> {
    let s = super::client(g)?.set_stopped(name, stopped).await?;
    output::print(g.output, &s, |s| {
        if stopped {
            println!("{} stopped: its instances are drained and stopped", s.name);
        } else {
            println!(
                "{} started: {} instance(s) of v{} on their way",
                s.name,
                s.desired_instances,
                or_dash(s.release)
            );
        }
    })
}
