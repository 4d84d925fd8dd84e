//! The process driver: instances are process groups on this machine.
//!
//! Layout under the root (`<data-dir>/instances`):
//! ```text
//! <root>/<instance_id>/work/        private working copy of the release (see copy.rs)
//! <root>/<instance_id>/stdout.log   the instance's stdout, opened O_APPEND (written by an
//!                                   output relay that redacts secrets, when it has any)
//! <root>/<instance_id>/stderr.log   the instance's stderr, opened O_APPEND
//! <root>/<instance_id>/handle.json  the handle start() returned, for list() of leader-less groups
//! ```
//!
//! An instance is `/bin/sh -c COMMAND` in a session of its own (pgid = sid = pid),
//! so the whole group can be signalled, and its output goes straight into files, so
//! the daemon can die without the instance noticing. Identity is (pid, start_time):
//! a pid whose `/proc/<pid>/stat` start time differs has been reused, and the
//! instance counts as exited. Processes are found again after a restart by the
//! `TEND_RUNTIME_ROOT` marker in their environment.

mod cgroup;
mod copy;
mod procfs;

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use self::cgroup::Cgroups;
use self::procfs::Probe;
use crate::{
    Capabilities, Handle, InstanceSpec, LimitSupport, Runtime, RuntimeError, State, Stats,
};

/// Environment variable marking our processes; its value is the canonical root.
const MARKER: &str = "TEND_RUNTIME_ROOT";
/// PATH given to instances when neither the release nor the daemon has one.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How often `wait` polls /proc for an adopted instance.
const ADOPTED_POLL: Duration = Duration::from_millis(100);
/// How often `stop` checks whether the group is gone (short: a cooperative stop should return fast).
const STOP_POLL: Duration = Duration::from_millis(20);
/// How long `stop` waits for the group to vanish after SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for our reaper task to publish the exit status of a zombie child.
const REAP_TIMEOUT: Duration = Duration::from_secs(2);
/// Where cgroup v2 is normally mounted.
const CGROUP_MOUNT: &str = "/sys/fs/cgroup";

/// How limits are enforced, decided once at construction.
#[derive(Clone, Debug)]
enum Limits {
    Cgroup(Cgroups),
    Rlimit,
}

/// An instance this daemon process spawned: its exit status arrives from a reaper task.
#[derive(Debug)]
struct Child {
    pid: u32,
    start_time: u64,
    status: watch::Receiver<Option<ExitStatus>>,
}

/// The embedded driver: runs instances as process groups on this machine (Linux).
///
/// Clones share the record of spawned children, so they see the same exit statuses.
#[derive(Clone, Debug)]
pub struct ProcessRuntime {
    root: PathBuf,
    /// `root` as text: the value of the MARKER variable.
    marker: String,
    limits: Limits,
    children: Arc<Mutex<HashMap<String, Child>>>,
    /// Program and arguments of the output relay (`crate::relay`), if any.
    relay: Option<(PathBuf, Vec<String>)>,
}

fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> RuntimeError {
    let path = path.into();
    move |source| RuntimeError::Io { path, source }
}

fn proc_err(pid: u32) -> impl FnOnce(io::Error) -> RuntimeError {
    io_err(format!("/proc/{pid}/stat"))
}

fn exited(status: ExitStatus) -> State {
    State::Exited {
        code: status.code(),
        signal: status.signal(),
    }
}

const UNKNOWN_EXIT: State = State::Exited {
    code: None,
    signal: None,
};

/// Instance ids become file and cgroup names: keep them to a safe alphabet.
fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 200 {
        return Err("instance_id must be 1 to 200 characters".into());
    }
    if id.starts_with('.') {
        return Err("instance_id must not start with '.'".into());
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("instance_id may contain only ASCII letters, digits, '-', '_' and '.'".into());
    }
    Ok(())
}

fn check_spec(spec: &InstanceSpec) -> Result<(), String> {
    check_id(&spec.instance_id)?;
    if spec.command.trim().is_empty() {
        return Err("command is empty".into());
    }
    if spec.command.contains('\0') {
        return Err("command contains a NUL byte".into());
    }
    for (k, v) in &spec.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(format!("invalid environment variable name {k:?}"));
        }
        if v.contains('\0') {
            return Err(format!("environment variable {k} contains a NUL byte"));
        }
    }
    if spec.memory_limit == Some(0) {
        return Err("memory_limit must be positive".into());
    }
    if let Some(c) = spec.cpu_limit {
        if !(c.is_finite() && c > 0.0) {
            return Err(format!(
                "cpu_limit must be a positive number of CPUs, got {c}"
            ));
        }
    }
    Ok(())
}

/// Runs in the forked child before exec: only async-signal-safe calls (no allocation, no locks).
fn child_setup(cgroup_procs: Option<&CString>, rlimit_data: Option<u64>) -> io::Result<()> {
    // SAFETY: plain syscalls on values prepared before fork; nothing here allocates.
    unsafe {
        // A session of its own: pgid = pid, so stop() can signal the whole group, and no
        // controlling terminal, so the daemon's terminal hanging up cannot reach it.
        if libc::setsid() < 0 {
            return Err(io::Error::last_os_error());
        }
        // Ignored signals survive exec: a daemon ignoring SIGTERM or SIGHUP must not
        // hand that to the instance, or stop() would always need the grace period.
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        // The instance must outlive the daemon: no parent-death signal (fork clears it;
        // clearing again documents the intent).
        libc::prctl(libc::PR_SET_PDEATHSIG, 0);
        if let Some(path) = cgroup_procs {
            // Writing "0" moves the writing process itself; done before exec so that no
            // instance code ever runs outside its limits.
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let n = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = io::Error::last_os_error();
            libc::close(fd);
            if n != 1 {
                return Err(err);
            }
        }
        if let Some(bytes) = rlimit_data {
            // RLIMIT_DATA (private writable mappings, Linux >= 4.7), not RLIMIT_AS: many
            // runtimes (Go, the JVM, V8) reserve far more address space than they use.
            let lim = libc::rlimit {
                rlim_cur: bytes as libc::rlim_t,
                rlim_max: bytes as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_DATA, &lim) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Sends `sig` to process group `pgid`; a group that is already gone is not an error.
fn killpg(instance: &str, pgid: u32, sig: i32) -> Result<(), RuntimeError> {
    // SAFETY: killpg has no memory-safety preconditions; pgid > 1 is checked by callers.
    if unsafe { libc::killpg(pgid as libc::pid_t, sig) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(RuntimeError::Signal {
            instance: instance.to_owned(),
            signal: sig,
            source: err,
        })
    }
}

/// A pipe whose ends are closed on exec (only the intended child gets them, as
/// its stdin or stdout).
fn pipe() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    })
}

fn open_log(path: &Path) -> Result<File, RuntimeError> {
    // O_APPEND: several writers (the instance, a restarted instance) never overwrite each other.
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .map_err(io_err(path))
}

impl ProcessRuntime {
    /// A driver keeping instances under `root` (`<data-dir>/instances`), created if missing.
    ///
    /// Uses cgroup v2 limits when `/sys/fs/cgroup` is a usable cgroup v2 hierarchy, rlimits otherwise.
    pub fn new(root: PathBuf) -> Result<Self, RuntimeError> {
        Self::with_cgroup_mount(root, Some(PathBuf::from(CGROUP_MOUNT)))
    }

    /// Like [`ProcessRuntime::new`] with another cgroup v2 mount point, or `None` to use rlimits only.
    pub fn with_cgroup_mount(
        root: PathBuf,
        cgroup_mount: Option<PathBuf>,
    ) -> Result<Self, RuntimeError> {
        fs::create_dir_all(&root).map_err(io_err(&root))?;
        // Canonical: the marker must compare equal however the root was spelled.
        let root = fs::canonicalize(&root).map_err(io_err(&root))?;
        let marker = root
            .to_str()
            .ok_or_else(|| RuntimeError::Io {
                path: root.clone(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "root is not UTF-8"),
            })?
            .to_owned();
        let limits = match cgroup_mount {
            Some(mount) => match Cgroups::detect(&mount) {
                Ok(cg) => {
                    tracing::info!(mount = %mount.display(), "process runtime: cgroup v2 limits");
                    Limits::Cgroup(cg)
                }
                Err(reason) => {
                    tracing::info!(%reason, "process runtime: no usable cgroup v2, using rlimits");
                    Limits::Rlimit
                }
            },
            None => Limits::Rlimit,
        };
        Ok(ProcessRuntime {
            root,
            marker,
            limits,
            children: Arc::new(Mutex::new(HashMap::new())),
            relay: None,
        })
    }

    /// Runs `program args...` as the output relay of instances with secrets
    /// (see [`crate::relay`]). Without one, such instances are refused.
    pub fn with_output_relay(mut self, program: PathBuf, args: Vec<String>) -> Self {
        self.relay = Some((program, args));
        self
    }

    /// Starts a relay copying `input` (a pipe's read end) into `file`,
    /// redacting `secrets`; it ends when the pipe's writers are gone.
    fn spawn_relay(
        &self,
        id: &str,
        input: std::os::fd::OwnedFd,
        file: File,
        secrets: &[(&str, &str)],
    ) -> Result<(), RuntimeError> {
        let Some((program, args)) = &self.relay else {
            return Err(RuntimeError::InvalidSpec {
                instance: id.to_owned(),
                reason: "it has secrets but this runtime has no output relay to redact them".into(),
            });
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .env_clear()
            .envs(crate::relay::env_for(secrets.iter().copied()))
            .stdin(Stdio::from(input))
            .stdout(Stdio::from(file))
            .stderr(Stdio::null())
            .kill_on_drop(false);
        // SAFETY: child_setup only makes async-signal-safe calls. A session of its
        // own: signals for the daemon's process group do not reach the relay.
        unsafe {
            cmd.pre_exec(|| child_setup(None, None));
        }
        let mut child = cmd.spawn().map_err(|source| RuntimeError::Spawn {
            instance: id.to_owned(),
            source,
        })?;
        // Reaped here while the daemon lives; by init after.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        Ok(())
    }

    /// The canonical root directory of this driver.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn instance_dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    fn handle_file(&self, id: &str) -> PathBuf {
        self.instance_dir(id).join("handle.json")
    }

    fn children(&self) -> MutexGuard<'_, HashMap<String, Child>> {
        // A panic while holding the lock cannot leave the map inconsistent (single inserts/removes).
        self.children.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The exit-status channel if `handle` is a process this daemon spawned.
    fn child_status(&self, h: &Handle) -> Option<watch::Receiver<Option<ExitStatus>>> {
        self.children()
            .get(&h.instance_id)
            .filter(|c| c.pid == h.pid && c.start_time == h.start_time)
            .map(|c| c.status.clone())
    }

    /// The handle `start` would have returned for this instance, pid and start time.
    fn make_handle(&self, id: &str, pid: u32, start_time: u64, cgroup: Option<PathBuf>) -> Handle {
        let dir = self.instance_dir(id);
        Handle {
            instance_id: id.to_owned(),
            pid,
            start_time,
            work_dir: dir.join("work"),
            stdout_path: dir.join("stdout.log"),
            stderr_path: dir.join("stderr.log"),
            cgroup,
        }
    }

    fn read_handle_file(&self, id: &str) -> Option<Handle> {
        let raw = fs::read(self.handle_file(id)).ok()?;
        serde_json::from_slice(&raw).ok()
    }

    fn write_handle_file(&self, h: &Handle) -> Result<(), RuntimeError> {
        let path = self.handle_file(&h.instance_id);
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(h).map_err(|e| io_err(&tmp)(e.into()))?;
        // Written aside then renamed, so a crash never leaves a torn file.
        fs::write(&tmp, json).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    /// Refuses handles that could make a destructive call touch something not ours.
    fn check_handle(&self, h: &Handle) -> Result<(), RuntimeError> {
        let invalid = |reason: String| RuntimeError::InvalidHandle {
            instance: h.instance_id.clone(),
            reason,
        };
        check_id(&h.instance_id).map_err(invalid)?;
        // pid 0 and 1 as a process group would mean "our own group" and "init's group".
        if h.pid <= 1 || h.pid == std::process::id() {
            return Err(invalid(format!("pid {} cannot be an instance", h.pid)));
        }
        let expected = self.make_handle(&h.instance_id, h.pid, h.start_time, None);
        if h.work_dir != expected.work_dir
            || h.stdout_path != expected.stdout_path
            || h.stderr_path != expected.stderr_path
        {
            return Err(invalid(format!(
                "paths are not under this runtime's root {}",
                self.root.display()
            )));
        }
        if let Some(cg) = &h.cgroup {
            let named_ok = cg.file_name() == Some(h.instance_id.as_ref())
                && cg.parent().and_then(Path::file_name) == Some("tend".as_ref());
            let owned = match &self.limits {
                Limits::Cgroup(cgs) => cgs.owns(cg),
                Limits::Rlimit => true,
            };
            if !(named_ok && owned) {
                return Err(invalid(format!("cgroup {} is not ours", cg.display())));
            }
        }
        Ok(())
    }

    /// Whether process `pid` carries this runtime's marker for instance `id`.
    fn is_ours(&self, pid: u32, id: &str) -> bool {
        let Some(env) = procfs::environ(pid) else {
            return false;
        };
        let has = |k: &str, v: &str| env.iter().any(|(ek, ev)| ek == k && ev == v);
        has(MARKER, &self.marker) && has("TEND_INSTANCE", id)
    }

    /// Whether any process of the instance's group is still alive (not a zombie).
    fn group_alive(&self, h: &Handle) -> Result<bool, RuntimeError> {
        if h.pid <= 1 {
            return Ok(false);
        }
        let members = || procfs::group_members(h.pid).map_err(io_err("/proc"));
        Ok(
            match procfs::probe(h.pid, h.start_time).map_err(proc_err(h.pid))? {
                Probe::Alive { .. } => true,
                // The pid was reused, so the number was free: our group no longer exists.
                Probe::Reused => false,
                // The leader is ours (same start time), so its group is too.
                Probe::Zombie => !members()?.is_empty(),
                // The leader is reaped; a group with its number holds the pid reserved, but
                // check the marker anyway in case the number was recycled in between.
                Probe::Absent => members()?
                    .iter()
                    .any(|(pid, _)| self.is_ours(*pid, &h.instance_id)),
            },
        )
    }

    /// Current state; for our own zombie child, waits briefly for the reaper's real status.
    async fn state(&self, h: &Handle) -> Result<State, RuntimeError> {
        let child = self.child_status(h);
        if let Some(status) = child.as_ref().and_then(|rx| *rx.borrow()) {
            return Ok(exited(status));
        }
        match procfs::probe(h.pid, h.start_time).map_err(proc_err(h.pid))? {
            Probe::Alive { stopped } => Ok(State::Running {
                pid: h.pid,
                stopped,
            }),
            Probe::Reused => Ok(UNKNOWN_EXIT),
            Probe::Zombie | Probe::Absent => match child {
                // Exited but the reaper task has not published the status yet: it is about to.
                Some(mut rx) => {
                    let got =
                        tokio::time::timeout(REAP_TIMEOUT, rx.wait_for(Option::is_some)).await;
                    Ok(match got {
                        Ok(Ok(status)) => status.map_or(UNKNOWN_EXIT, exited),
                        _ => UNKNOWN_EXIT,
                    })
                }
                None => Ok(UNKNOWN_EXIT),
            },
        }
    }

    /// Polls until no process of the group is alive or `deadline` passes; true when gone.
    async fn group_gone_by(&self, h: &Handle, deadline: Instant) -> Result<bool, RuntimeError> {
        loop {
            if !self.group_alive(h)? {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(STOP_POLL.min(deadline - now)).await;
        }
    }

    /// The environment of an instance: only the release's, plus what the driver adds.
    fn env_for(&self, spec: &InstanceSpec, work: &Path) -> BTreeMap<String, String> {
        let mut env = spec.env.clone();
        env.entry("PATH".into())
            .or_insert_with(|| std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_owned()));
        env.entry("HOME".into())
            .or_insert_with(|| work.to_string_lossy().into_owned());
        env.insert("PORT".into(), spec.port.to_string());
        env.insert("TEND_SERVICE".into(), spec.service.clone());
        env.insert("TEND_RELEASE".into(), spec.release.to_string());
        env.insert("TEND_INSTANCE".into(), spec.instance_id.clone());
        env.insert(MARKER.into(), self.marker.clone());
        env
    }

    /// Every live process group carrying our marker, as handles (blocking /proc scan).
    fn scan(&self) -> Result<Vec<Handle>, RuntimeError> {
        let mut groups: BTreeMap<(String, u32), ()> = BTreeMap::new();
        for pid in procfs::pids().map_err(io_err("/proc"))? {
            let Some(env) = procfs::environ(pid) else {
                continue;
            };
            let get = |k: &str| env.iter().find(|(ek, _)| ek == k).map(|(_, v)| v.as_str());
            if get(MARKER) != Some(self.marker.as_str()) {
                continue;
            }
            let Some(id) = get("TEND_INSTANCE").filter(|id| check_id(id).is_ok()) else {
                continue;
            };
            let Ok(Some(st)) = procfs::read_stat(pid) else {
                continue;
            };
            if st.is_dead() || st.pgrp <= 1 {
                continue;
            }
            groups.insert((id.to_owned(), st.pgrp as u32), ());
        }
        let mut out = Vec::with_capacity(groups.len());
        for (id, pgid) in groups.into_keys() {
            let recorded = self.read_handle_file(&id).filter(|h| h.pid == pgid);
            // The leader's start time if it still exists (possibly as a zombie); else the
            // recorded one; else 0: only orphans remain and stop() can still kill them.
            let start_time = match procfs::read_stat(pgid) {
                Ok(Some(st)) if st.pgrp as u32 == pgid => Some(st.start_time),
                _ => None,
            }
            .or(recorded.as_ref().map(|h| h.start_time))
            .unwrap_or(0);
            let handle = match recorded {
                Some(h) if h.start_time == start_time => h,
                _ => {
                    let cgroup = match &self.limits {
                        Limits::Cgroup(cg) => Some(cg.dir(&id)).filter(|d| d.is_dir()),
                        Limits::Rlimit => None,
                    };
                    self.make_handle(&id, pgid, start_time, cgroup)
                }
            };
            out.push(handle);
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl Runtime for ProcessRuntime {
    fn name(&self) -> &'static str {
        "process"
    }

    fn capabilities(&self) -> Capabilities {
        let (memory_limit, cpu_limit) = match self.limits {
            Limits::Cgroup(_) => (LimitSupport::Cgroup, LimitSupport::Cgroup),
            // No rlimit caps CPU bandwidth (RLIMIT_CPU kills after total seconds).
            Limits::Rlimit => (LimitSupport::Rlimit, LimitSupport::None),
        };
        Capabilities {
            recover: true,
            stats: true,
            memory_limit,
            cpu_limit,
        }
    }

    async fn start(&self, spec: &InstanceSpec) -> Result<Handle, RuntimeError> {
        let id = spec.instance_id.as_str();
        check_spec(spec).map_err(|reason| RuntimeError::InvalidSpec {
            instance: id.to_owned(),
            reason,
        })?;
        if let Some(old) = self.read_handle_file(id) {
            if matches!(
                procfs::probe(old.pid, old.start_time).map_err(proc_err(old.pid))?,
                Probe::Alive { .. }
            ) {
                return Err(RuntimeError::AlreadyRunning {
                    instance: id.to_owned(),
                    pid: old.pid,
                });
            }
        }
        let dir = self.instance_dir(id);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let work = dir.join("work");
        {
            let (src, dst) = (spec.release_dir.clone(), work.clone());
            // A leftover copy from an interrupted start is replaced, never reused half-made.
            tokio::task::spawn_blocking(move || {
                copy::remove_tree(&dst)?;
                copy::copy_tree(&src, &dst)
            })
            .await
            .map_err(|e| io_err(&work)(io::Error::other(e)))??;
        }
        let stdout = open_log(&dir.join("stdout.log"))?;
        let stderr = open_log(&dir.join("stderr.log"))?;
        let secrets: Vec<(&str, &str)> = spec
            .redact
            .iter()
            .filter_map(|k| spec.env.get(k).map(|v| (k.as_str(), v.as_str())))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        let (stdout, stderr) = if secrets.is_empty() {
            (Stdio::from(stdout), Stdio::from(stderr))
        } else {
            // Pipes through relays: no secret value reaches the files.
            let (out_r, out_w) = pipe().map_err(io_err(&dir))?;
            let (err_r, err_w) = pipe().map_err(io_err(&dir))?;
            self.spawn_relay(id, out_r, stdout, &secrets)?;
            self.spawn_relay(id, err_r, stderr, &secrets)?;
            (Stdio::from(out_w), Stdio::from(err_w))
        };

        let (cgroup, rlimit_data) = match &self.limits {
            Limits::Cgroup(cg) => (
                Some(cg.create(id, spec.memory_limit, spec.cpu_limit)?),
                None,
            ),
            Limits::Rlimit => {
                if spec.cpu_limit.is_some() {
                    tracing::warn!(instance = id, "cpu_limit not enforced: no cgroup v2");
                }
                (None, spec.memory_limit)
            }
        };
        let procs =
            match &cgroup {
                Some(dir) => {
                    let path = cgroup::procs_file(dir);
                    Some(CString::new(path.as_os_str().as_bytes()).map_err(|e| {
                        io_err(&path)(io::Error::new(io::ErrorKind::InvalidInput, e))
                    })?)
                }
                None => None,
            };

        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(shell_line(&spec.command))
            .current_dir(&work)
            .env_clear()
            .envs(self.env_for(spec, &work))
            .stdin(Stdio::null())
            // Files, not pipes: the daemon's death must not SIGPIPE or block the instance.
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(false);
        // SAFETY: child_setup only makes async-signal-safe calls.
        unsafe {
            cmd.pre_exec(move || child_setup(procs.as_ref(), rlimit_data));
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(source) => {
                if let Some(cg) = &cgroup {
                    let _ = cgroup::remove(cg).await;
                }
                return Err(RuntimeError::Spawn {
                    instance: id.to_owned(),
                    source,
                });
            }
        };
        let pid = child.id().ok_or_else(|| RuntimeError::Spawn {
            instance: id.to_owned(),
            source: io::Error::other("child exited before its pid was read"),
        })?;
        // Read before the reaper task exists: an unreaped child's stat stays readable.
        let registered = procfs::read_stat(pid)
            .map_err(proc_err(pid))
            .and_then(|st| {
                st.ok_or_else(|| RuntimeError::NotFound {
                    instance: id.to_owned(),
                })
            })
            .and_then(|st| {
                let h = self.make_handle(id, pid, st.start_time, cgroup.clone());
                self.write_handle_file(&h).map(|()| h)
            });
        let handle = match registered {
            Ok(h) => h,
            Err(e) => {
                // Nobody would know about this process: do not leave it running.
                let _ = killpg(id, pid, libc::SIGKILL);
                return Err(e);
            }
        };

        let (tx, rx) = watch::channel(None);
        let instance = id.to_owned();
        tokio::spawn(async move {
            // Reaps the child (no zombies) and publishes its real exit status.
            match child.wait().await {
                Ok(status) => {
                    tracing::info!(instance, pid, ?status, "instance exited");
                    tx.send_replace(Some(status));
                }
                Err(e) => tracing::warn!(instance, pid, error = %e, "waiting for instance failed"),
            }
        });
        self.children().insert(
            id.to_owned(),
            Child {
                pid,
                start_time: handle.start_time,
                status: rx,
            },
        );
        tracing::info!(instance = id, pid, service = %spec.service, release = spec.release, "instance started");
        Ok(handle)
    }

    async fn recover(&self, handle: &Handle) -> Result<State, RuntimeError> {
        // Nothing to re-establish: identity is (pid, start_time) and the process never
        // depended on us. Re-attaching is therefore a pure observation, hence idempotent.
        let state = self.state(handle).await?;
        tracing::info!(instance = %handle.instance_id, pid = handle.pid, ?state, "recovered");
        Ok(state)
    }

    async fn inspect(&self, handle: &Handle) -> Result<State, RuntimeError> {
        self.state(handle).await
    }

    async fn wait(&self, handle: &Handle) -> Result<State, RuntimeError> {
        if let Some(mut rx) = self.child_status(handle) {
            if let Ok(status) = rx.wait_for(Option::is_some).await {
                if let Some(status) = *status {
                    return Ok(exited(status));
                }
            }
            // The reaper is gone (the async runtime is shutting down): poll like an adoptee.
        }
        loop {
            match procfs::probe(handle.pid, handle.start_time).map_err(proc_err(handle.pid))? {
                Probe::Alive { .. } => tokio::time::sleep(ADOPTED_POLL).await,
                _ => return self.state(handle).await,
            }
        }
    }

    async fn stop(
        &self,
        handle: &Handle,
        signal: i32,
        grace: Duration,
    ) -> Result<State, RuntimeError> {
        let id = handle.instance_id.as_str();
        if handle.pid <= 1 || handle.pid == std::process::id() {
            return Err(RuntimeError::InvalidHandle {
                instance: id.to_owned(),
                reason: format!("pid {} cannot be an instance", handle.pid),
            });
        }
        if !self.group_alive(handle)? {
            return self.state(handle).await;
        }
        tracing::info!(
            instance = id,
            pid = handle.pid,
            signal,
            ?grace,
            "stopping instance"
        );
        killpg(id, handle.pid, signal)?;
        if signal != libc::SIGKILL && signal != libc::SIGCONT {
            // A stopped process only acts on the signal once continued.
            killpg(id, handle.pid, libc::SIGCONT)?;
        }
        if !self.group_gone_by(handle, Instant::now() + grace).await? {
            tracing::warn!(
                instance = id,
                pid = handle.pid,
                "grace period over, sending SIGKILL"
            );
            killpg(id, handle.pid, libc::SIGKILL)?;
            if let Some(cg) = &handle.cgroup {
                // Also catches processes that left the group with setsid.
                cgroup::kill_all(cg);
            }
            if !self
                .group_gone_by(handle, Instant::now() + KILL_TIMEOUT)
                .await?
            {
                tracing::warn!(instance = id, pid = handle.pid, "processes survive SIGKILL");
            }
        }
        self.state(handle).await
    }

    async fn destroy(&self, handle: &Handle) -> Result<(), RuntimeError> {
        self.check_handle(handle)?;
        let id = handle.instance_id.as_str();
        if let State::Running { pid, .. } = self.state(handle).await? {
            return Err(RuntimeError::StillRunning {
                instance: id.to_owned(),
                pid,
            });
        }
        // Stragglers of an exited leader would run on in a deleted working copy.
        if self.group_alive(handle)? {
            killpg(id, handle.pid, libc::SIGKILL)?;
        }
        let work = handle.work_dir.clone();
        tokio::task::spawn_blocking(move || copy::remove_tree(&work))
            .await
            .map_err(|e| io_err(&handle.work_dir)(io::Error::other(e)))??;
        let file = self.handle_file(id);
        match fs::remove_file(&file) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&file)(e)),
            _ => {}
        }
        {
            let mut children = self.children();
            if children
                .get(id)
                .is_some_and(|c| c.pid == handle.pid && c.start_time == handle.start_time)
            {
                children.remove(id);
            }
        }
        if let Some(cg) = &handle.cgroup {
            cgroup::remove(cg).await?;
        }
        tracing::info!(instance = id, "instance destroyed (logs kept)");
        Ok(())
    }

    async fn stats(&self, handle: &Handle) -> Result<Stats, RuntimeError> {
        let not_found = || RuntimeError::NotFound {
            instance: handle.instance_id.clone(),
        };
        match procfs::probe(handle.pid, handle.start_time).map_err(proc_err(handle.pid))? {
            Probe::Alive { .. } => {}
            _ => return Err(not_found()),
        }
        let pgid = handle.pid;
        let members = tokio::task::spawn_blocking(move || procfs::group_members(pgid))
            .await
            .map_err(|e| io_err("/proc")(io::Error::other(e)))?
            .map_err(io_err("/proc"))?;
        // Summed over the process group: a shell wrapper's own usage is negligible and the
        // real work is in its children. RSS double-counts pages shared between members.
        let mut ticks = 0u64;
        let mut stats = Stats::default();
        for (pid, st) in &members {
            ticks += st.utime + st.stime + st.cutime + st.cstime;
            if let Some(u) = procfs::usage(*pid) {
                stats.rss_bytes += u.rss_bytes;
                stats.threads += u.threads;
                stats.open_fds += u.open_fds;
            }
        }
        stats.cpu_seconds = ticks as f64 / procfs::clock_ticks() as f64;
        if let Some(dir) = handle.cgroup.clone() {
            stats.cgroup = tokio::task::spawn_blocking(move || cgroup::usage(&dir))
                .await
                .ok()
                .flatten();
        }
        Ok(stats)
    }

    async fn list(&self) -> Result<Vec<Handle>, RuntimeError> {
        let me = self.clone();
        // Reading every process's environ is blocking file I/O: keep it off the async threads.
        tokio::task::spawn_blocking(move || me.scan())
            .await
            .map_err(|e| io_err("/proc")(io::Error::other(e)))?
    }
}

/// The line given to `sh -c`. A simple command (no `;`, `&`, `|`, redirection,
/// substitution or newline) is prefixed with `exec`, so the service itself is
/// the instance's leader process: its pid is the one shown, its exit status is
/// the instance's, and a signal to the leader reaches it. dash, Debian's
/// `/bin/sh`, does not do this on its own.
fn shell_line(command: &str) -> String {
    let compound = command.contains([';', '&', '|', '<', '>', '`', '\n', '(', ')'])
        || command.trim_start().starts_with("exec ");
    if compound {
        command.to_string()
    } else {
        format!("exec {command}")
    }
}

#[cfg(test)]
mod shell_line_tests {
    use super::shell_line;

    #[test]
    fn simple_commands_are_execed_compound_ones_left_alone() {
        assert_eq!(shell_line("./app --port $PORT"), "exec ./app --port $PORT");
        assert_eq!(shell_line("exec ./app"), "exec ./app");
        assert_eq!(shell_line("echo hi; ./app"), "echo hi; ./app");
        assert_eq!(shell_line("./app > out.log"), "./app > out.log");
        assert_eq!(shell_line("a && b"), "a && b");
    }
}
