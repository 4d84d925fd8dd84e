//! One module per group of commands.

pub mod audit;
pub mod channels;
pub mod config;
pub mod demo;
pub mod deploy;
pub mod incidents;
pub mod login;
pub mod logs;
pub mod manifest;
pub mod metrics;
pub mod oncall;
pub mod query;
pub mod secrets;
pub mod server;
pub mod services;
pub mod teams;
pub mod tokens;

use anyhow::Result;
use tend_client::Client;

use crate::cli::Global;
use crate::profile;

/// A client for the server and token chosen by flags, environment or login.
pub fn client(g: &Global) -> Result<Client> {
    let saved = profile::load()?;
    let url = server_url(g, &saved);
    let token = g.token.clone().or(saved.token);
    if token.is_none() {
        anyhow::bail!(
            "no token: pass --token, set TEND_TOKEN, or run `tend login` \
             (the first admin token is in <data-dir>/admin.token)"
        );
    }
    Ok(Client::new(&url, token)?)
}

/// The server URL: the flag or TEND_URL, then the saved login, then the default.
pub fn server_url(g: &Global, saved: &profile::Config) -> String {
    g.url
        .clone()
        .or_else(|| saved.url.clone())
        .unwrap_or_else(|| profile::DEFAULT_URL.to_string())
}

/// Parses a name argument, with the reason when it is not a DNS label.
pub fn name<T: std::str::FromStr<Err = tend_core::NameError>>(what: &str, s: &str) -> Result<T> {
    s.parse().map_err(|e| {
        let hint = tend_core::names::suggest_dns_label(s)
            .map(|h| format!(" (try `{h}`)"))
            .unwrap_or_default();
        anyhow::anyhow!("invalid {what} name {s:?}: {e}{hint}")
    })
}
