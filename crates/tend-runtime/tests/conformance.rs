//! Conformance suite for `Runtime` drivers.
//!
//! Every scenario is written against `&dyn Runtime` plus a small [`Harness`] that
//! gives a driver-neutral view of the things a scenario must poke at from outside
//! (make a release, suspend an instance, read a file of its working copy). A new
//! driver (Kubernetes) implements `Harness` and instantiates the same scenarios
//! with `conformance_tests!`.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{eventually, DEADLINE};
use tend_runtime::{
    Handle, InstanceSpec, LimitSupport, ProcessRuntime, Runtime, RuntimeError, State,
};

/// Which output stream of an instance.
#[derive(Clone, Copy, Debug)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// What the scenarios need from a driver besides the `Runtime` trait.
pub trait Harness: Send + Sync {
    /// The runtime under test (the running daemon).
    fn runtime(&self) -> Arc<dyn Runtime>;
    /// A new runtime over the same state, as after a daemon restart.
    fn restarted(&self) -> Arc<dyn Runtime>;
    /// A new release directory holding `(path, contents, mode)` files.
    fn release(&self, files: &[(&str, &str, u32)]) -> PathBuf;
    /// Reads a file of a release directory.
    fn release_file(&self, release: &std::path::Path, rel: &str) -> Option<String>;
    /// Reads a file of the instance's working copy.
    fn work_file(&self, h: &Handle, rel: &str) -> Option<String>;
    /// Everything the instance wrote to a stream so far.
    fn log(&self, h: &Handle, stream: Stream) -> String;
    /// Suspends every process of the instance (SIGSTOP).
    fn suspend(&self, h: &Handle);
    /// Whether process `pid` (as the instance sees it, e.g. from `$!`) is alive.
    fn alive(&self, h: &Handle, pid: u32) -> bool;
    /// Kills everything of the instance, synchronously (used on test exit, even on failure).
    fn kill(&self, h: &Handle);
    /// Kills everything any runtime of this harness started (test exit, even on failure).
    fn kill_everything(&self);
}

/// A scenario's context: the harness, the runtime, and cleanup of what it started.
pub struct Ctx {
    harness: Box<dyn Harness>,
    rt: Arc<dyn Runtime>,
    started: Mutex<Vec<Handle>>,
    next: AtomicU32,
}

impl Ctx {
    fn new(harness: Box<dyn Harness>) -> Ctx {
        let rt = harness.runtime();
        Ctx {
            harness,
            rt,
            started: Mutex::new(Vec::new()),
            next: AtomicU32::new(0),
        }
    }

    /// A spec with a fresh instance id.
    fn spec(&self, name: &str, release: &std::path::Path, command: &str) -> InstanceSpec {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        common::spec(&format!("{name}-{n}"), release, command)
    }

    /// Starts an instance and registers it for cleanup.
    async fn start_on(&self, rt: &dyn Runtime, spec: &InstanceSpec) -> Handle {
        let h = rt.start(spec).await.expect("start");
        self.started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(h.clone());
        h
    }

    async fn start(&self, spec: &InstanceSpec) -> Handle {
        self.start_on(self.rt.as_ref(), spec).await
    }

    /// Waits (bounded) until a stream contains `needle`.
    async fn log_contains(&self, h: &Handle, stream: Stream, needle: &str) {
        eventually(
            &format!("{stream:?} contains {needle:?}"),
            DEADLINE,
            || async { self.harness.log(h, stream).contains(needle) },
        )
        .await;
    }

    /// `wait` with a deadline.
    async fn wait(&self, rt: &dyn Runtime, h: &Handle) -> State {
        tokio::time::timeout(DEADLINE, rt.wait(h))
            .await
            .expect("instance did not exit in time")
            .expect("wait")
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        for h in self
            .started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            self.harness.kill(h);
        }
        self.harness.kill_everything();
    }
}

const RUN_SH: &str = "#!/bin/sh\n\
    env > env.txt\n\
    pwd > pwd.txt\n\
    echo ready\n\
    exec sleep 1000\n";

// ---------------------------------------------------------------- scenarios

/// Start → Running, with exactly the release's environment plus the driver's variables.
pub async fn env_and_cwd(ctx: &Ctx) {
    let release = ctx.harness.release(&[("run.sh", RUN_SH, 0o755)]);
    let spec = ctx.spec("env", &release, "./run.sh");
    let h = ctx.start(&spec).await;
    assert_eq!(h.instance_id, spec.instance_id);
    assert!(matches!(
        ctx.rt.inspect(&h).await.expect("inspect"),
        State::Running { stopped: false, .. }
    ));
    ctx.log_contains(&h, Stream::Stdout, "ready").await;

    let env_txt = ctx.harness.work_file(&h, "env.txt").expect("env.txt");
    let env: Vec<(&str, &str)> = env_txt.lines().filter_map(|l| l.split_once('=')).collect();
    let get = |k: &str| env.iter().find(|(ek, _)| *ek == k).map(|(_, v)| *v);
    assert_eq!(get("PORT"), Some("18080"));
    assert_eq!(get("TEND_SERVICE"), Some("web"));
    assert_eq!(get("TEND_RELEASE"), Some("3"));
    assert_eq!(get("TEND_INSTANCE"), Some(spec.instance_id.as_str()));
    assert_eq!(get("GREETING"), Some("hello world"));
    assert!(get("PATH").is_some_and(|p| !p.is_empty()));
    let pwd = ctx.harness.work_file(&h, "pwd.txt").expect("pwd.txt");
    assert_eq!(
        get("HOME"),
        Some(pwd.trim()),
        "HOME defaults to the working copy"
    );

    // Nothing of the daemon's environment leaks in: only these, plus what sh sets itself.
    let allowed = |k: &str| {
        spec.env.contains_key(k)
            || k.starts_with("TEND_")
            || matches!(
                k,
                "PATH" | "HOME" | "PORT" | "PWD" | "OLDPWD" | "SHLVL" | "_"
            )
    };
    for (k, _) in std::env::vars() {
        if !allowed(&k) {
            assert_eq!(
                get(&k),
                None,
                "daemon variable {k} leaked into the instance"
            );
        }
    }
    for (k, _) in &env {
        assert!(allowed(k), "unexpected variable {k} in the instance");
    }
}

/// A relative command runs from the working copy; writes there touch neither the
/// release nor another instance's copy.
pub async fn working_copy_isolation(ctx: &Ctx) {
    let release = ctx.harness.release(&[
        ("run.sh", RUN_SH, 0o755),
        ("data.txt", "orig\n", 0o644),
        ("sub/deep.txt", "deep\n", 0o644),
    ]);
    let writer = ctx.spec("writer", &release, "echo changed > data.txt && echo x > sub/deep.txt && echo new > added.txt && rm run.sh && echo wrote");
    let reader = ctx.spec("reader", &release, "./run.sh");
    let b = ctx.start(&reader).await;
    let a = ctx.start(&writer).await;
    assert_eq!(
        ctx.wait(ctx.rt.as_ref(), &a).await,
        State::Exited {
            code: Some(0),
            signal: None
        }
    );
    ctx.log_contains(&a, Stream::Stdout, "wrote").await;
    assert_eq!(
        ctx.harness.work_file(&a, "data.txt").as_deref(),
        Some("changed\n")
    );

    assert_eq!(
        ctx.harness.release_file(&release, "data.txt").as_deref(),
        Some("orig\n")
    );
    assert_eq!(
        ctx.harness
            .release_file(&release, "sub/deep.txt")
            .as_deref(),
        Some("deep\n")
    );
    assert_eq!(ctx.harness.release_file(&release, "added.txt"), None);
    assert!(ctx.harness.release_file(&release, "run.sh").is_some());

    ctx.log_contains(&b, Stream::Stdout, "ready").await;
    assert_eq!(
        ctx.harness.work_file(&b, "data.txt").as_deref(),
        Some("orig\n")
    );
    assert_eq!(ctx.harness.work_file(&b, "added.txt"), None);
    assert!(ctx.rt.inspect(&b).await.expect("inspect").is_running());
}

/// stdout and stderr land in their own logs; `wait` gives the child's real exit status.
pub async fn logs_and_exit_codes(ctx: &Ctx) {
    let release = ctx.harness.release(&[]);
    let h = ctx
        .start(&ctx.spec("logs", &release, "echo to-out; echo to-err >&2; exit 7"))
        .await;
    assert_eq!(
        ctx.wait(ctx.rt.as_ref(), &h).await,
        State::Exited {
            code: Some(7),
            signal: None
        }
    );
    // inspect after exit agrees, and wait again is fine.
    assert_eq!(
        ctx.rt.inspect(&h).await.expect("inspect"),
        State::Exited {
            code: Some(7),
            signal: None
        }
    );
    assert_eq!(ctx.harness.log(&h, Stream::Stdout), "to-out\n");
    assert_eq!(ctx.harness.log(&h, Stream::Stderr), "to-err\n");

    let k = ctx.start(&ctx.spec("killed", &release, "kill -9 $$")).await;
    assert_eq!(
        ctx.wait(ctx.rt.as_ref(), &k).await,
        State::Exited {
            code: None,
            signal: Some(libc::SIGKILL)
        }
    );
}

/// SIGTERM on a cooperative instance returns well before the grace period.
pub async fn stop_cooperative(ctx: &Ctx) {
    let release = ctx.harness.release(&[("run.sh", RUN_SH, 0o755)]);
    let h = ctx.start(&ctx.spec("coop", &release, "./run.sh")).await;
    ctx.log_contains(&h, Stream::Stdout, "ready").await;
    let t = Instant::now();
    let state = ctx
        .rt
        .stop(&h, libc::SIGTERM, Duration::from_secs(20))
        .await
        .expect("stop");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    assert!(!state.is_running(), "{state:?}");
    assert!(!ctx.rt.inspect(&h).await.expect("inspect").is_running());
    // Idempotent on an exited instance.
    let again = ctx
        .rt
        .stop(&h, libc::SIGTERM, Duration::from_secs(20))
        .await
        .expect("stop again");
    assert_eq!(again, state);
}

/// An instance ignoring SIGTERM is SIGKILLed after the grace period, with its whole
/// process group (a background grandchild included).
pub async fn stop_escalates_to_kill(ctx: &Ctx) {
    let release = ctx.harness.release(&[]);
    // `trap '' TERM` is inherited by both sleeps: nobody in the group reacts to TERM.
    let cmd = "trap '' TERM; sleep 1000 & echo $! > bg.pid; echo ready; sleep 1000";
    let h = ctx.start(&ctx.spec("stubborn", &release, cmd)).await;
    ctx.log_contains(&h, Stream::Stdout, "ready").await;
    let bg: u32 = ctx
        .harness
        .work_file(&h, "bg.pid")
        .expect("bg.pid")
        .trim()
        .parse()
        .expect("pid");
    assert!(ctx.harness.alive(&h, bg));

    let grace = Duration::from_millis(1500);
    let t = Instant::now();
    let state = ctx.rt.stop(&h, libc::SIGTERM, grace).await.expect("stop");
    let took = t.elapsed();
    assert!(
        took >= grace,
        "returned after {took:?}, before the grace period"
    );
    assert!(took < grace + Duration::from_secs(8), "took {took:?}");
    assert!(!state.is_running(), "{state:?}");
    assert!(!ctx.harness.alive(&h, bg), "background grandchild survived");
}

/// A SIGSTOP'd instance shows as stopped, and `stop` still ends it promptly.
pub async fn stop_suspended(ctx: &Ctx) {
    let release = ctx.harness.release(&[("run.sh", RUN_SH, 0o755)]);
    let h = ctx.start(&ctx.spec("frozen", &release, "./run.sh")).await;
    ctx.log_contains(&h, Stream::Stdout, "ready").await;
    ctx.harness.suspend(&h);
    eventually("inspect shows stopped", DEADLINE, || async {
        matches!(
            ctx.rt.inspect(&h).await,
            Ok(State::Running { stopped: true, .. })
        )
    })
    .await;
    let t = Instant::now();
    let state = ctx
        .rt
        .stop(&h, libc::SIGTERM, Duration::from_secs(20))
        .await
        .expect("stop");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    assert!(!state.is_running(), "{state:?}");
}

/// A restarted daemon re-attaches by handle, finds the instance by listing, and
/// tells a reused pid (wrong start time) from the real process.
pub async fn adoption(ctx: &Ctx) {
    let release = ctx.harness.release(&[("run.sh", RUN_SH, 0o755)]);
    let h = ctx.start(&ctx.spec("adopt", &release, "./run.sh")).await;
    ctx.log_contains(&h, Stream::Stdout, "ready").await;

    // The handle survives persistence as JSON.
    let json = serde_json::to_string(&h).expect("to json");
    let h: Handle = serde_json::from_str(&json).expect("from json");

    let rt2 = ctx.harness.restarted();
    let running = State::Running {
        pid: h.pid,
        stopped: false,
    };
    assert_eq!(rt2.recover(&h).await.expect("recover"), running);
    assert_eq!(rt2.recover(&h).await.expect("recover again"), running);
    assert_eq!(rt2.inspect(&h).await.expect("inspect"), running);
    assert!(rt2.list().await.expect("list").contains(&h));

    let stats = rt2.stats(&h).await.expect("stats");
    assert!(stats.cpu_seconds >= 0.0);
    assert!(stats.rss_bytes > 0 && stats.threads >= 1, "{stats:?}");

    let reused = Handle {
        start_time: h.start_time + 1,
        ..h.clone()
    };
    assert!(matches!(
        rt2.recover(&reused).await.expect("recover"),
        State::Exited { .. }
    ));

    // The adopted instance can be waited for and stopped by the new daemon.
    let waiter = {
        let (rt2, h) = (Arc::clone(&rt2), h.clone());
        tokio::spawn(async move { rt2.wait(&h).await })
    };
    let state = rt2
        .stop(&h, libc::SIGTERM, Duration::from_secs(10))
        .await
        .expect("stop");
    assert!(!state.is_running());
    let waited = tokio::time::timeout(DEADLINE, waiter)
        .await
        .expect("wait resolves")
        .expect("join")
        .expect("wait");
    assert!(!waited.is_running());
    assert!(!rt2.list().await.expect("list").contains(&h));
}

/// Dropping the runtime (the daemon going away) leaves instances running.
pub async fn survives_runtime_drop(ctx: &Ctx) {
    let release = ctx.harness.release(&[]);
    let rt = ctx.harness.restarted();
    let h = ctx
        .start_on(
            rt.as_ref(),
            &ctx.spec(
                "orphan",
                &release,
                "while :; do echo tick; sleep 0.05; done",
            ),
        )
        .await;
    ctx.log_contains(&h, Stream::Stdout, "tick").await;
    drop(rt);
    let before = ctx.harness.log(&h, Stream::Stdout).len();
    // Still producing output after the daemon is gone.
    eventually("output keeps growing", DEADLINE, || async {
        ctx.harness.log(&h, Stream::Stdout).len() > before + 20
    })
    .await;
    let rt2 = ctx.harness.restarted();
    assert!(rt2.recover(&h).await.expect("recover").is_running());
}

/// `destroy` removes the working copy but keeps the logs; refuses a running instance.
pub async fn destroy_keeps_logs(ctx: &Ctx) {
    let release = ctx.harness.release(&[("run.sh", RUN_SH, 0o755)]);
    let running = ctx.start(&ctx.spec("busy", &release, "./run.sh")).await;
    assert!(matches!(
        ctx.rt.destroy(&running).await,
        Err(RuntimeError::StillRunning { .. })
    ));

    let h = ctx
        .start(&ctx.spec("gone", &release, "echo bye; echo err >&2"))
        .await;
    assert_eq!(
        ctx.wait(ctx.rt.as_ref(), &h).await,
        State::Exited {
            code: Some(0),
            signal: None
        }
    );
    assert!(ctx.harness.work_file(&h, "run.sh").is_some());
    ctx.rt.destroy(&h).await.expect("destroy");
    assert_eq!(ctx.harness.work_file(&h, "run.sh"), None);
    assert_eq!(ctx.harness.log(&h, Stream::Stdout), "bye\n");
    assert_eq!(ctx.harness.log(&h, Stream::Stderr), "err\n");
    ctx.rt.destroy(&h).await.expect("destroy is idempotent");
    assert!(ctx.harness.release_file(&release, "run.sh").is_some());
}

/// An instance allocating past its memory limit does not get to finish.
pub async fn memory_limit(ctx: &Ctx) {
    if ctx.rt.capabilities().memory_limit == LimitSupport::None {
        return;
    }
    let release = ctx.harness.release(&[]);
    // The shell holds 64 MB in a variable; the command substitution is the allocation.
    let cmd = "x=$(head -c 64000000 /dev/zero | tr '\\0' a); echo done ${#x}";
    let free = ctx.start(&ctx.spec("unlimited", &release, cmd)).await;
    assert_eq!(
        ctx.wait(ctx.rt.as_ref(), &free).await,
        State::Exited {
            code: Some(0),
            signal: None
        }
    );
    assert_eq!(ctx.harness.log(&free, Stream::Stdout), "done 64000000\n");

    let mut spec = ctx.spec("limited", &release, cmd);
    spec.memory_limit = Some(16 << 20);
    let h = ctx.start(&spec).await;
    let state = ctx.wait(ctx.rt.as_ref(), &h).await;
    assert_ne!(
        state,
        State::Exited {
            code: Some(0),
            signal: None
        }
    );
    assert!(!ctx.harness.log(&h, Stream::Stdout).contains("done"));
}

/// Specs that cannot be run are refused before anything starts.
pub async fn invalid_specs(ctx: &Ctx) {
    let release = ctx.harness.release(&[]);
    let mut bad_id = ctx.spec("x", &release, "true");
    bad_id.instance_id = "../escape".into();
    assert!(matches!(
        ctx.rt.start(&bad_id).await,
        Err(RuntimeError::InvalidSpec { .. })
    ));
    let missing = ctx.spec("missing", &release.join("nope"), "true");
    assert!(ctx.rt.start(&missing).await.is_err());
}

// ---------------------------------------------------------------- process driver

struct ProcessHarness {
    tmp: tempfile::TempDir,
    root: PathBuf,
    releases: AtomicU32,
}

impl ProcessHarness {
    fn new() -> ProcessHarness {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("instances");
        std::fs::create_dir_all(&root).expect("mkdir");
        // Canonical, as the driver's marker is: kill_everything() matches on it.
        let root = std::fs::canonicalize(&root).expect("canonical root");
        ProcessHarness {
            tmp,
            root,
            releases: AtomicU32::new(0),
        }
    }
}

impl Harness for ProcessHarness {
    fn runtime(&self) -> Arc<dyn Runtime> {
        Arc::new(ProcessRuntime::new(self.root.clone()).expect("runtime"))
    }
    fn restarted(&self) -> Arc<dyn Runtime> {
        self.runtime()
    }
    fn release(&self, files: &[(&str, &str, u32)]) -> PathBuf {
        let n = self.releases.fetch_add(1, Ordering::Relaxed);
        let dir = self.tmp.path().join(format!("releases/r{n}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        common::write_release(&dir, files)
    }
    fn release_file(&self, release: &std::path::Path, rel: &str) -> Option<String> {
        std::fs::read_to_string(release.join(rel)).ok()
    }
    fn work_file(&self, h: &Handle, rel: &str) -> Option<String> {
        std::fs::read_to_string(h.work_dir.join(rel)).ok()
    }
    fn log(&self, h: &Handle, stream: Stream) -> String {
        let path = match stream {
            Stream::Stdout => &h.stdout_path,
            Stream::Stderr => &h.stderr_path,
        };
        std::fs::read_to_string(path).unwrap_or_default()
    }
    fn suspend(&self, h: &Handle) {
        // SAFETY: killpg has no memory-safety preconditions.
        unsafe { libc::killpg(h.pid as libc::pid_t, libc::SIGSTOP) };
    }
    fn alive(&self, _h: &Handle, pid: u32) -> bool {
        common::pid_alive(pid)
    }
    fn kill(&self, h: &Handle) {
        common::kill_group(h);
    }
    fn kill_everything(&self) {
        for pgid in common::groups_under(&self.root) {
            // SAFETY: killpg has no memory-safety preconditions; pgid > 1.
            unsafe { libc::killpg(pgid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// Instantiates every scenario for one driver.
macro_rules! conformance_tests {
    ($harness:expr; $($scenario:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $scenario() {
                let ctx = Ctx::new(Box::new($harness));
                super::$scenario(&ctx).await;
            }
        )*
    };
}

mod process {
    use super::*;

    conformance_tests!(ProcessHarness::new();
        env_and_cwd,
        working_copy_isolation,
        logs_and_exit_codes,
        stop_cooperative,
        stop_escalates_to_kill,
        stop_suspended,
        adoption,
        survives_runtime_drop,
        destroy_keeps_logs,
        memory_limit,
        invalid_specs,
    );
}
