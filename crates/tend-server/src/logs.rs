//! Wiring of the logs product: instances' output files in, the platform's
//! events in as platform lines.

use std::sync::Arc;
use std::time::Duration;

use tend_deploy::{InstanceOutput, OutputSink};
use tend_logs::{Level, Logs, Source};
use tend_store::Store;

/// Hands every instance's output files from the deploy controller to the logs.
pub(crate) struct LogsSink(pub Logs);

impl OutputSink for LogsSink {
    fn watch(&self, o: InstanceOutput) {
        self.0.watch(Source {
            service: o.service,
            team: o.team,
            release: o.release,
            instance: o.instance,
            stdout: o.stdout,
            stderr: o.stderr,
        });
    }

    fn finish(&self, instance: &str) {
        self.0.finish(instance);
    }
}

/// Copies every new event of the store into its service's log stream, so the
/// log reads as a story: deploys, crashes and health changes between the lines.
///
/// Starts after the newest event present: events written while the server was
/// down were written by it before it died, and a crash may lose at most the
/// last second of platform lines (their own capture file does not exist).
pub(crate) fn spawn_event_tailer(store: Arc<Store>, logs: Logs) {
    tokio::spawn(async move {
        let mut cursor = {
            let store = store.clone();
            match tokio::task::spawn_blocking(move || store.read(|tx| tx.last_event_id())).await {
                Ok(Ok(id)) => id,
                _ => 0,
            }
        };
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            let s = store.clone();
            let after = cursor;
            let events = match tokio::task::spawn_blocking(move || {
                s.read(|tx| tx.events_after(after, 1000))
            })
            .await
            {
                Ok(Ok(e)) => e,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot read events for the logs");
                    continue;
                }
                Err(_) => continue,
            };
            for e in events {
                cursor = e.id;
                let level = level_of(&e.kind);
                let instance = instance_in(&e.message);
                let release = instance.as_deref().and_then(release_of);
                let actor = e
                    .actor
                    .as_deref()
                    .map(|a| format!(" (by {a})"))
                    .unwrap_or_default();
                logs.platform(
                    &e.service,
                    release,
                    instance.as_deref(),
                    level,
                    &format!("{}: {}{actor}", e.kind, e.message),
                );
            }
        }
    });
}

fn level_of(kind: &str) -> Level {
    match kind {
        "instance.crashed" | "instance.crash_looping" | "deploy.failed" | "deploy.rolled_back" => {
            Level::Error
        }
        "instance.unhealthy" => Level::Warn,
        _ => Level::Info,
    }
}

/// The instance id an event message starts with (`web-v3-1a2b crashed ...`).
fn instance_in(message: &str) -> Option<String> {
    let first = message.split_whitespace().next()?;
    release_of(first).map(|_| first.to_string())
}

fn release_of(instance: &str) -> Option<u32> {
    let (_, rest) = instance.rsplit_once("-v")?;
    let (v, suffix) = rest.split_once('-')?;
    (suffix.len() == 4 && suffix.chars().all(|c| c.is_ascii_hexdigit())).then_some(())?;
    v.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_instance_an_event_is_about() {
        assert_eq!(
            instance_in("web-v3-1a2b (v3) exit code 1").as_deref(),
            Some("web-v3-1a2b")
        );
        assert_eq!(release_of("my-svc-v12-00ff"), Some(12));
        assert_eq!(instance_in("deployment #3: v2 deployed"), None);
        assert_eq!(instance_in("service registered"), None);
    }
}
