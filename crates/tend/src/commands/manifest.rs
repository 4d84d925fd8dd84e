//! `tend validate` and `tend apply`.

use std::path::Path;

use anyhow::Result;
use owo_colors::OwoColorize;
use tend_manifest::LoadError;

use crate::cli::Global;
use crate::{exit, output, Reported};

fn load(path: &Path) -> Result<tend_manifest::Loaded> {
    match tend_manifest::load(path) {
        Ok(loaded) => Ok(loaded),
        Err(LoadError::Invalid(diag)) => {
            eprint!("{}", diag.render(output::color_stderr()));
            Err(Reported(exit::ERROR).into())
        }
        Err(e) => Err(e.into()),
    }
}

/// Checks a manifest locally; exit 0 if valid, 1 with the diagnostics if not.
pub fn validate(path: &Path) -> Result<()> {
    let loaded = load(path)?;
    let ok = if output::color_stdout() {
        "ok".green().bold().to_string()
    } else {
        "ok".to_string()
    };
    println!(
        "{ok}: {} is a valid manifest for service `{}` (owner `{}`)",
        loaded.path.display(),
        loaded.spec.name(),
        loaded.spec.owner()
    );
    Ok(())
}

/// Validates locally, then registers or updates the service on the server.
pub async fn apply(g: &Global, path: &Path) -> Result<()> {
    let loaded = load(path)?;
    let client = super::client(g)?;
    let file_name = loaded.path.display().to_string();
    let resp = match client.apply(&loaded.source, &file_name).await {
        Ok(r) => r,
        Err(tend_client::ClientError::Api { body, .. })
            if body.error.code == "invalid_manifest" =>
        {
            // The server's validation is authoritative; show its diagnostics as is.
            eprintln!("{}", body.error.message);
            return Err(Reported(exit::ERROR).into());
        }
        Err(e) => return Err(e.into()),
    };
    output::print(g.output, &resp, |r| {
        let verb = match r.outcome {
            tend_api::ApplyOutcome::Created => "created",
            tend_api::ApplyOutcome::Updated => "updated",
            tend_api::ApplyOutcome::Unchanged => "unchanged",
        };
        println!(
            "service/{} {verb} (owner `{}`, generation {})",
            r.service.name, r.service.owner, r.service.generation
        );
    })
}
