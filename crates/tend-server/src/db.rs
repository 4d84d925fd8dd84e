//! Store transactions run from async handlers: reads, and changes written in
//! one transaction with their audit entry.

use tend_core::model::{NewAuditEntry, Outcome};
use tend_core::TeamName;
use tend_store::Tx;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::AppState;

/// What a change records about itself in the audit trail.
#[derive(Debug, Default)]
pub struct AuditNote {
    /// The team that owns the target, once known.
    pub team: Option<TeamName>,
    /// A short summary of what changed.
    pub detail: Option<String>,
}

/// Runs `change` in a write transaction and appends an audit entry for it in the
/// same transaction. If `change` fails, nothing it did is kept and an entry
/// with outcome `denied` (401/403) or `failed` (anything else) is written instead.
pub async fn audited<T, F>(
    state: &AppState,
    caller: &Caller,
    action: &'static str,
    target: String,
    change: F,
) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&mut Tx<'_>, &mut AuditNote) -> Result<T, ApiError> + Send + 'static,
{
    let store = state.store.clone();
    let actor = caller.principal.name.to_string();
    let client = caller.client.clone();
    tokio::task::spawn_blocking(move || {
        let mut note = AuditNote::default();
        let entry = |outcome, note: &AuditNote, detail: Option<String>| NewAuditEntry {
            actor: Some(actor.clone()),
            action: action.to_string(),
            target: target.clone(),
            team: note.team.clone(),
            outcome,
            client: client.clone(),
            detail,
        };
        let result = store.write(|tx| {
            let out = change(tx, &mut note)?;
            tx.append_audit(&entry(Outcome::Allowed, &note, note.detail.clone()))?;
            Ok::<_, ApiError>(out)
        });
        if let Err(err) = &result {
            let outcome = if err.is_denial() {
                Outcome::Denied
            } else {
                Outcome::Failed
            };
            let e = entry(outcome, &note, Some(err.to_string()));
            if let Err(audit_err) = store.write(|tx| tx.append_audit(&e)) {
                tracing::error!(error = %audit_err, "cannot record refused request in the audit trail");
            }
        }
        result
    })
    .await
    .map_err(|e| ApiError::Internal(format!("change task failed: {e}")))?
}

/// Runs a read-only `query` on a blocking thread.
pub async fn read<T, F>(state: &AppState, query: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&Tx<'_>) -> Result<T, ApiError> + Send + 'static,
{
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || store.read(query))
        .await
        .map_err(|e| ApiError::Internal(format!("query task failed: {e}")))?
}
