//! The `tend` binary: the CLI, `tend server` and `tend demo`.

mod cli;
mod commands;
mod output;
mod profile;

use std::process::ExitCode;

use clap::Parser;
use owo_colors::OwoColorize;
use tend_client::ClientError;

use crate::cli::{Cli, Command};

// The router and the API allocate per request on several threads; mimalloc's
// thread-local free lists make that markedly cheaper than glibc's malloc
// (measured in bench/router.py).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit codes that mean something to scripts.
pub mod exit {
    /// A command failed.
    pub const ERROR: u8 = 1;
    /// The server could not be reached.
    pub const UNREACHABLE: u8 = 3;
    /// The token is missing, wrong, or lacks the rights.
    pub const NOT_AUTHORISED: u8 = 4;
    /// The thing asked for does not exist.
    pub const NOT_FOUND: u8 = 5;
}

/// An error whose message was already printed (e.g. manifest diagnostics).
#[derive(Debug)]
pub struct Reported(pub u8);

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}

impl std::error::Error for Reported {}

fn main() -> ExitCode {
    // An instance's output relay (redacting secrets) is this binary too.
    tend_runtime::relay::main_if_relay();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Server(_) | Command::Demo(_)) {
        // A client command piped into `head` should end quietly when the pipe
        // closes, like other Unix tools, not panic on a failed print. The
        // server keeps Rust's default (SIGPIPE ignored): it must survive a
        // client that goes away.
        // SAFETY: setting a signal disposition before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::ERROR);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => ExitCode::from(report(&err)),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let g = &cli.global;
    match cli.command {
        Command::Server(args) => match args.command {
            Some(crate::cli::ServerCommand::RotateKey) => commands::secrets::rotate_key(g).await,
            None => commands::server::run(args).await,
        },
        Command::Demo(args) => commands::demo::run(args).await,
        Command::Login => commands::login::run(g).await,
        Command::Whoami => commands::login::whoami(g).await,
        Command::Validate(p) => commands::manifest::validate(&p.path),
        Command::Apply(p) => commands::manifest::apply(g, &p.path).await,
        Command::Deploy(args) => commands::deploy::deploy(g, args).await,
        Command::Status(a) => commands::deploy::status(g, &a.name).await,
        Command::Releases(a) => commands::deploy::releases(g, &a.name).await,
        Command::Rollback(a) => commands::deploy::rollback(g, a).await,
        Command::Scale(a) => commands::deploy::scale(g, a).await,
        Command::Restart(a) => commands::deploy::restart(g, a).await,
        Command::Stop(a) => commands::deploy::set_stopped(g, &a.name, true).await,
        Command::Start(a) => commands::deploy::set_stopped(g, &a.name, false).await,
        Command::Services(args) => commands::services::run(g, args).await,
        Command::Config(args) => commands::config::run(g, args).await,
        Command::Secrets(args) => commands::secrets::run(g, args).await,
        Command::Events(args) => commands::services::events(g, args).await,
        Command::Logs(args) => commands::logs::run(g, args).await,
        Command::Teams(args) => commands::teams::run(g, args).await,
        Command::Tokens(args) => commands::tokens::run(g, args).await,
        Command::Audit(args) => commands::audit::run(g, args).await,
        Command::Query(args) => commands::query::run(g, args).await,
        Command::Incidents(args) => commands::incidents::run(g, args).await,
        Command::Ack(a) => commands::incidents::ack(g, a).await,
        Command::Resolve(a) => commands::incidents::resolve(g, a).await,
        Command::Oncall(args) => commands::oncall::run(g, args).await,
        Command::Metrics(args) => commands::metrics::run(g, args).await,
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "tend", &mut std::io::stdout());
            Ok(())
        }
    }
}

/// Prints `err` as one clear line (plus its causes) and picks the exit code.
fn report(err: &anyhow::Error) -> u8 {
    if let Some(Reported(code)) = err.downcast_ref::<Reported>() {
        return *code;
    }
    let prefix = if output::color_stderr() {
        "error:".red().bold().to_string()
    } else {
        "error:".to_string()
    };
    eprintln!("{prefix} {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    match err.downcast_ref::<ClientError>() {
        Some(ClientError::Unreachable { .. }) => exit::UNREACHABLE,
        Some(e) => match e.status().map(|s| s.as_u16()) {
            Some(401) | Some(403) => exit::NOT_AUTHORISED,
            Some(404) => exit::NOT_FOUND,
            _ => exit::ERROR,
        },
        None => exit::ERROR,
    }
}
