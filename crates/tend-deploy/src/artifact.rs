//! Builds and the content-addressed artifact store.
//!
//! A build runs in its own working copy (`builds/<deployment>`). The result is
//! hashed — paths, file types, executable bits, contents and symlink targets, in
//! a fixed order — and moved to `artifacts/<sha256>`. Two deploys of the same
//! files share one artifact. Artifacts are never changed after the move;
//! instances run from their own copies.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Why a build or an artifact operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// File system trouble.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The build command could not be started.
    #[error("cannot run the build command: {0}")]
    Spawn(std::io::Error),
    /// The build command failed.
    #[error("the build command failed ({status})")]
    Failed {
        /// How it ended.
        status: String,
    },
    /// The build command ran too long.
    #[error("the build command did not finish within {}", humanize(*.0))]
    TimedOut(Duration),
}

fn humanize(d: Duration) -> String {
    tend_manifest::format_duration(d)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where builds happen and artifacts live, under the data directory.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    artifacts: PathBuf,
    builds: PathBuf,
}

impl ArtifactStore {
    /// Uses `<data_dir>/artifacts` and `<data_dir>/builds`.
    pub fn new(data_dir: &Path) -> Result<Self, ArtifactError> {
        let artifacts = data_dir.join("artifacts");
        let builds = data_dir.join("builds");
        std::fs::create_dir_all(&artifacts).map_err(io(&artifacts))?;
        std::fs::create_dir_all(&builds).map_err(io(&builds))?;
        Ok(Self { artifacts, builds })
    }

    /// A fresh working copy directory for a build.
    pub fn build_dir(&self, deployment: i64) -> Result<PathBuf, ArtifactError> {
        let dir = self.builds.join(deployment.to_string());
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
        }
        Ok(dir)
    }

    /// The files of an artifact.
    pub fn path(&self, digest: &str) -> PathBuf {
        self.artifacts.join(digest)
    }

    /// Whether an artifact is present.
    pub fn exists(&self, digest: &str) -> bool {
        self.path(digest).is_dir()
    }

    /// Hashes a built working copy and moves it into the store; returns its digest.
    pub fn commit(&self, work: &Path) -> Result<String, ArtifactError> {
        let digest = tree_digest(work)?;
        let dest = self.path(&digest);
        if dest.exists() {
            std::fs::remove_dir_all(work).map_err(io(work))?;
        } else {
            std::fs::rename(work, &dest).map_err(io(&dest))?;
        }
        Ok(digest)
    }

    /// Removes artifacts not in `keep` and leftover build directories; returns
    /// how many artifacts were removed.
    pub fn gc(
        &self,
        keep: &HashSet<String>,
        active_builds: &HashSet<i64>,
    ) -> Result<usize, ArtifactError> {
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.artifacts).map_err(io(&self.artifacts))? {
            let entry = entry.map_err(io(&self.artifacts))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                std::fs::remove_dir_all(entry.path()).map_err(io(&entry.path()))?;
                removed += 1;
            }
        }
        for entry in std::fs::read_dir(&self.builds).map_err(io(&self.builds))? {
            let entry = entry.map_err(io(&self.builds))?;
            let id = entry.file_name().to_string_lossy().parse::<i64>().ok();
            if id.is_none_or(|id| !active_builds.contains(&id)) {
                let p = entry.path();
                if p.is_dir() {
                    std::fs::remove_dir_all(&p).map_err(io(&p))?;
                } else {
                    std::fs::remove_file(&p).map_err(io(&p))?;
                }
            }
        }
        Ok(removed)
    }
}

/// A deterministic digest of a directory tree.
pub fn tree_digest(root: &Path) -> Result<String, ArtifactError> {
    let mut hasher = Sha256::new();
    hash_dir(root, Path::new(""), &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

fn hash_dir(root: &Path, rel: &Path, h: &mut Sha256) -> Result<(), ArtifactError> {
    let dir = root.join(rel);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .map_err(io(&dir))?
        .collect::<Result<_, _>>()
        .map_err(io(&dir))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let rel_path = rel.join(e.file_name());
        let path = e.path();
        let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        // Length-prefix every field so no two trees hash alike by concatenation.
        let name = rel_path.to_string_lossy();
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).map_err(io(&path))?;
            let t = target.to_string_lossy();
            h.update(b"L");
            h.update((t.len() as u64).to_le_bytes());
            h.update(t.as_bytes());
        } else if meta.is_dir() {
            h.update(b"D");
            hash_dir(root, &rel_path, h)?;
            h.update(b"E");
        } else {
            #[cfg(unix)]
            let exec = {
                use std::os::unix::fs::PermissionsExt;
                meta.permissions().mode() & 0o111 != 0
            };
            #[cfg(not(unix))]
            let exec = false;
            h.update(if exec { b"X" } else { b"F" });
            h.update(meta.len().to_le_bytes());
            let mut f = std::fs::File::open(&path).map_err(io(&path))?;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = f.read(&mut buf).map_err(io(&path))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
        }
    }
    Ok(())
}

/// Runs `command` with `sh -c` in `dir`, passing every output line (stdout and
/// stderr, interleaved as they come) to `on_line`. The whole process group is
/// killed at `timeout`.
pub async fn run_build(
    dir: &Path,
    command: &str,
    env: &[(String, String)],
    timeout: Duration,
    mut on_line: impl FnMut(String),
) -> Result<(), ArtifactError> {
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(command)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().map_err(ArtifactError::Spawn)?;
    let pid = child.id();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    if let Some(out) = child.stdout.take() {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                let _ = tx.send(l);
            }
        });
    }
    if let Some(err) = child.stderr.take() {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                let _ = tx.send(l);
            }
        });
    }
    drop(tx);
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut output_done = false;
    let status = loop {
        tokio::select! {
            line = rx.recv(), if !output_done => match line {
                Some(l) => on_line(l),
                None => output_done = true,
            },
            status = child.wait(), if output_done => break status.map_err(ArtifactError::Spawn)?,
            _ = &mut deadline => {
                if let Some(pid) = pid {
                    // SAFETY: killpg on the build's own process group.
                    unsafe { libc::killpg(pid as i32, libc::SIGKILL) };
                }
                let _ = child.wait().await;
                return Err(ArtifactError::TimedOut(timeout));
            }
        }
    };
    if status.success() {
        Ok(())
    } else {
        Err(ArtifactError::Failed {
            status: crate::describe_exit(status.code(), {
                #[cfg(unix)]
                {
                    use std::os::unix::process::ExitStatusExt;
                    status.signal()
                }
                #[cfg(not(unix))]
                None
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_trees_share_a_digest_and_changes_change_it() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for d in [a.path(), b.path()] {
            std::fs::create_dir_all(d.join("bin")).unwrap();
            std::fs::write(d.join("bin/app"), "#!/bin/sh\n").unwrap();
            std::fs::write(d.join("tend.toml"), "x").unwrap();
        }
        assert_eq!(
            tree_digest(a.path()).unwrap(),
            tree_digest(b.path()).unwrap()
        );
        std::fs::write(b.path().join("tend.toml"), "y").unwrap();
        assert_ne!(
            tree_digest(a.path()).unwrap(),
            tree_digest(b.path()).unwrap()
        );
    }

    #[test]
    fn commit_deduplicates_and_gc_removes_the_unkept() {
        let data = tempfile::tempdir().unwrap();
        let store = ArtifactStore::new(data.path()).unwrap();
        let mut digests = vec![];
        for (id, content) in [(1, "a"), (2, "a"), (3, "b")] {
            let dir = store.build_dir(id).unwrap();
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("f"), content).unwrap();
            digests.push(store.commit(&dir).unwrap());
            assert!(!dir.exists());
        }
        assert_eq!(digests[0], digests[1]);
        assert_ne!(digests[0], digests[2]);
        let keep: HashSet<String> = [digests[2].clone()].into();
        assert_eq!(store.gc(&keep, &HashSet::new()).unwrap(), 1);
        assert!(!store.exists(&digests[0]));
        assert!(store.exists(&digests[2]));
    }

    #[tokio::test]
    async fn builds_stream_output_fail_and_time_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut lines = vec![];
        run_build(
            dir.path(),
            "echo one; echo two >&2; touch built",
            &[],
            Duration::from_secs(30),
            |l| lines.push(l),
        )
        .await
        .unwrap();
        lines.sort();
        assert_eq!(lines, ["one", "two"]);
        assert!(dir.path().join("built").exists());
        let err = run_build(dir.path(), "exit 3", &[], Duration::from_secs(30), |_| {})
            .await
            .unwrap_err();
        assert!(err.to_string().contains("exit code 3"), "{err}");
        let started = std::time::Instant::now();
        let err = run_build(
            dir.path(),
            "sleep 30 & sleep 30",
            &[],
            Duration::from_millis(300),
            |_| {},
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ArtifactError::TimedOut(_)));
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
