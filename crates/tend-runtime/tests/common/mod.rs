//! Helpers shared by the integration tests: releases, deadlines, and cleanup of every
//! process a test starts.
#![allow(dead_code)] // each test crate uses a different subset

use std::collections::BTreeMap;
use std::fs;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tend_runtime::{Handle, InstanceSpec};

/// Generous: CI machines have 2 cores and run tests in parallel.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Polls `cond` until it holds, panicking with `what` after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes a release directory: `(path, contents, mode)` per file.
pub fn write_release(dir: &Path, files: &[(&str, &str, u32)]) -> PathBuf {
    for (rel, contents, mode) in files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("mkdir release");
        }
        fs::write(&path, contents).expect("write release file");
        fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).expect("chmod");
    }
    dir.to_path_buf()
}

/// A spec with test defaults.
pub fn spec(id: &str, release_dir: &Path, command: &str) -> InstanceSpec {
    InstanceSpec {
        instance_id: id.to_owned(),
        service: "web".to_owned(),
        release: 3,
        release_dir: release_dir.to_path_buf(),
        command: command.to_owned(),
        env: BTreeMap::from([("GREETING".to_owned(), "hello world".to_owned())]),
        redact: vec![],
        port: 18_080,
        memory_limit: None,
        cpu_limit: None,
    }
}

/// `/proc/<pid>/stat`: (state, start_time), split at the last ')' as comm may hold anything.
pub fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest: Vec<&str> = s[s.rfind(')')? + 1..].split_whitespace().collect();
    Some((rest.first()?.chars().next()?, rest.get(19)?.parse().ok()?))
}

/// Whether `pid` is a live (non-zombie) process.
pub fn pid_alive(pid: u32) -> bool {
    matches!(proc_stat(pid), Some((state, _)) if state != 'Z' && state != 'X')
}

/// SIGKILLs the instance's process group unless its pid now belongs to someone else.
pub fn kill_group(h: &Handle) {
    if h.pid <= 1 {
        return;
    }
    let ours = match proc_stat(h.pid) {
        Some((_, start)) => start == h.start_time,
        // Leader gone: orphans may remain in its group, which keeps the number reserved.
        None => true,
    };
    if ours {
        // SAFETY: killpg has no memory-safety preconditions.
        unsafe { libc::killpg(h.pid as libc::pid_t, libc::SIGKILL) };
    }
}

/// Kills every registered instance when dropped, so a failing test leaves nothing behind.
#[derive(Default)]
pub struct KillGuard {
    handles: Mutex<Vec<Handle>>,
    /// Canonical runtime roots whose every marked process is killed too (catches
    /// instances whose handle a failing test never got hold of).
    roots: Mutex<Vec<PathBuf>>,
}

impl KillGuard {
    /// Registers an instance to kill at the end of the test.
    pub fn track(&self, h: &Handle) {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(h.clone());
    }

    /// Registers a runtime root: every process carrying its marker is killed at the end.
    pub fn watch_root(&self, root: &Path) {
        self.roots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(root.to_path_buf());
    }
}

/// Process groups of the processes whose environment marks them as started under `root`.
pub fn groups_under(root: &Path) -> Vec<u32> {
    let marker = format!("TEND_RUNTIME_ROOT={}", root.display());
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(env) = fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()) {
            if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) {
                let pgrp = stat
                    .rfind(')')
                    .and_then(|i| stat[i + 1..].split_whitespace().nth(2))
                    .and_then(|p| p.parse::<u32>().ok());
                if let Some(pgrp) = pgrp.filter(|p| *p > 1) {
                    out.push(pgrp);
                }
            }
        }
    }
    out
}

impl Drop for KillGuard {
    fn drop(&mut self) {
        for h in self
            .handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            kill_group(h);
        }
        for root in self.roots.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            for pgid in groups_under(root) {
                // SAFETY: killpg has no memory-safety preconditions; pgid > 1.
                unsafe { libc::killpg(pgid as libc::pid_t, libc::SIGKILL) };
            }
        }
    }
}
