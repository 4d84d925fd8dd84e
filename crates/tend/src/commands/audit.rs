//! `tend audit`.

use anyhow::Result;
use tend_core::TeamName;

use crate::cli::{AuditArgs, Global};
use crate::output::{self, or_dash, print_table, table};

/// Prints the latest audit entries.
pub async fn run(g: &Global, args: AuditArgs) -> Result<()> {
    let team: Option<TeamName> = args
        .team
        .as_deref()
        .map(|t| super::name("team", t))
        .transpose()?;
    let entries = super::client(g)?.audit(team.as_ref(), args.limit).await?;
    output::print(g.output, &entries, |entries| {
        let mut t = table([
            "time", "actor", "action", "target", "outcome", "client", "detail",
        ]);
        for e in entries {
            t.add_row(vec![
                e.time.to_string(),
                or_dash(e.actor.as_ref()),
                e.action.clone(),
                e.target.clone(),
                e.outcome.as_str().to_string(),
                or_dash(e.client.as_ref()),
                or_dash(e.detail.as_ref()),
            ]);
        }
        print_table(&t);
    })
}
