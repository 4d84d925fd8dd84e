//! `tend server`.

use anyhow::{Context, Result};
use tend_server::{RemoteWriteConfig, Server, ServerConfig, SmtpConfig};

use crate::cli::ServerArgs;

/// Runs the server until SIGINT or SIGTERM.
pub async fn run(args: ServerArgs) -> Result<()> {
    init_tracing();
    let config = ServerConfig {
        keep_releases: args.keep_releases,
        build_timeout: args.build_timeout,
        scrape_interval: args.scrape_interval,
        logs_loki_url: args.logs_loki_url,
        alert_interval: args.alert_interval,
        pagerduty_url: args.pagerduty_url,
        smtp: args.smtp_url.map(|url| SmtpConfig {
            url,
            from: args.smtp_from,
            username: args.smtp_username,
            password: args.smtp_password,
        }),
        alertmanager_url: args.alertmanager_url,
        master_key_file: args.master_key_file,
        metrics_remote_write: args.metrics_remote_write_url.map(|url| RemoteWriteConfig {
            bearer_token: args.metrics_remote_write_token,
            ..RemoteWriteConfig::new(url)
        }),
        ..ServerConfig::new(args.data_dir, args.listen, args.router_listen)
    };
    if let Some(smtp) = &config.smtp {
        smtp.check().context("bad --smtp-url or --smtp-from")?;
    }
    if let Some(url) = &config.alertmanager_url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            anyhow::bail!("--alertmanager-url must be an http:// or https:// URL, got `{url}`");
        }
    }
    let server = Server::bind(&config)
        .await
        .context("cannot start the server")?;
    let addr = server.local_addr()?;
    if let Some(token) = &server.bootstrap_token {
        // Printed once, on stdout, so it can be captured; also in admin.token.
        println!("admin token: {token}");
        println!(
            "(saved to {}; it is not shown again)",
            config
                .data_dir
                .join(tend_server::ADMIN_TOKEN_FILE)
                .display()
        );
    }
    tracing::info!(api = %addr, data_dir = %config.data_dir.display(), "tend server listening");
    eprintln!("tend server listening on http://{addr}");
    eprintln!("tend router listening on http://{}", server.router_addr());
    server.serve(shutdown_signal()).await?;
    tracing::info!("tend server stopped");
    Ok(())
}

/// Logs to stderr; RUST_LOG overrides the default level.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(crate::output::color_stderr())
        .try_init();
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
