//! cgroup v2 limits: one cgroup per instance under `<mount>/tend/`.
//!
//! Used only when cgroup v2 is mounted at the given mount point (normally
//! `/sys/fs/cgroup`) with the `memory` and `cpu` controllers available and
//! delegatable to `tend/`. Inside a container whose cgroup namespace root holds the
//! daemon itself, enabling controllers fails (the "no internal processes" rule) and
//! the driver falls back to rlimits; so it does on cgroup v1 or hybrid hosts.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::RuntimeError;

/// Period of `cpu.max`, in microseconds (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;
/// The controllers the driver needs.
const CONTROLLERS: [&str; 2] = ["cpu", "memory"];

/// The `tend/` parent cgroup under which instance cgroups are made.
#[derive(Clone, Debug)]
pub(crate) struct Cgroups {
    parent: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Controller names in a `cgroup.controllers` / `cgroup.subtree_control` file.
fn controller_set(path: &Path) -> io::Result<Vec<String>> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    Ok(text
        .split_whitespace()
        .map(|c| c.trim_start_matches('+').to_owned())
        .collect())
}

/// Enables the needed controllers for the children of `dir`.
fn enable_controllers(dir: &Path) -> io::Result<()> {
    let file = dir.join("cgroup.subtree_control");
    let enabled = controller_set(&file)?;
    for c in CONTROLLERS {
        if !enabled.iter().any(|e| e == c) {
            fs::write(&file, format!("+{c}"))?;
        }
    }
    Ok(())
}

impl Cgroups {
    /// Sets up `<mount>/tend` with the cpu and memory controllers, or says why it cannot.
    pub(crate) fn detect(mount: &Path) -> Result<Cgroups, String> {
        let controllers = mount.join("cgroup.controllers");
        if !controllers.exists() {
            return Err(format!("no cgroup v2 at {}", mount.display()));
        }
        let available = controller_set(&controllers)
            .map_err(|e| format!("cgroup v2 not readable at {}: {e}", mount.display()))?;
        if let Some(missing) = CONTROLLERS
            .iter()
            .find(|c| !available.iter().any(|a| a == *c))
        {
            return Err(format!("cgroup v2 controller {missing} not available"));
        }
        enable_controllers(mount).map_err(|e| format!("cannot enable controllers: {e}"))?;
        let parent = mount.join("tend");
        match fs::create_dir(&parent) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot create {}: {e}", parent.display())),
        }
        enable_controllers(&parent)
            .map_err(|e| format!("cannot enable controllers in {}: {e}", parent.display()))?;
        Ok(Cgroups { parent })
    }

    /// The cgroup directory of an instance.
    pub(crate) fn dir(&self, instance_id: &str) -> PathBuf {
        self.parent.join(instance_id)
    }

    /// Whether `dir` is an instance cgroup of this parent (guards destructive calls on handles).
    pub(crate) fn owns(&self, dir: &Path) -> bool {
        dir.parent() == Some(self.parent.as_path())
    }

    /// Creates (or reuses) the instance's cgroup and writes its limits.
    pub(crate) fn create(
        &self,
        instance_id: &str,
        memory: Option<u64>,
        cpus: Option<f64>,
    ) -> Result<PathBuf, RuntimeError> {
        let dir = self.dir(instance_id);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(&dir)(e)),
        }
        let write = |file: &str, value: &str| {
            let path = dir.join(file);
            fs::write(&path, value).map_err(io_err(&path))
        };
        match memory {
            Some(bytes) => {
                write("memory.max", &bytes.to_string())?;
                // The limit means memory, not memory-then-swap; the file is absent
                // without swap accounting, hence best effort.
                let _ = write("memory.swap.max", "0");
            }
            None => write("memory.max", "max")?,
        }
        // On OOM kill the whole instance, not one random process of it (as Kubernetes does).
        let _ = write("memory.oom.group", "1");
        write("cpu.max", &cpu_max(cpus))?;
        Ok(dir)
    }
}

/// The `cpu.max` line for a limit in CPUs: "<quota> <period>", or "max <period>".
pub(crate) fn cpu_max(cpus: Option<f64>) -> String {
    match cpus {
        // The kernel refuses quotas under 1 ms.
        Some(c) => format!(
            "{} {CPU_PERIOD_US}",
            ((c * CPU_PERIOD_US as f64).round() as u64).max(1000)
        ),
        None => format!("max {CPU_PERIOD_US}"),
    }
}

/// The file a process writes "0" to in order to move itself into the cgroup.
pub(crate) fn procs_file(dir: &Path) -> PathBuf {
    dir.join("cgroup.procs")
}

/// SIGKILLs every process in the cgroup, including any that left the process group.
pub(crate) fn kill_all(dir: &Path) {
    if fs::write(dir.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    // cgroup.kill is Linux 5.14+; before that, kill the listed pids one by one.
    if let Ok(procs) = fs::read_to_string(procs_file(dir)) {
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            if pid > 0 {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Removes an instance cgroup, killing stragglers that keep it busy; `Ok` if already gone.
pub(crate) async fn remove(dir: &Path) -> Result<(), RuntimeError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(io_err(dir)(e));
                }
                kill_all(dir);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(io_err(dir)(e)),
        }
    }
}

/// Value of `key` in a flat-keyed cgroup file (`cpu.stat`, `memory.events`).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The cgroup's accounting; `None` when its files cannot be read (e.g. it is gone).
pub(crate) fn usage(dir: &Path) -> Option<crate::CgroupStats> {
    let read = |f: &str| fs::read_to_string(dir.join(f)).ok();
    let memory_bytes = read("memory.current")?.trim().parse().ok()?;
    let cpu = read("cpu.stat").unwrap_or_default();
    let events = read("memory.events").unwrap_or_default();
    Some(crate::CgroupStats {
        memory_bytes,
        cpu_seconds: keyed(&cpu, "usage_usec").unwrap_or(0) as f64 / 1e6,
        cpu_throttled_seconds: keyed(&cpu, "throttled_usec").unwrap_or(0) as f64 / 1e6,
        oom_kills: keyed(&events, "oom_kill").unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_lines() {
        assert_eq!(cpu_max(Some(0.5)), "50000 100000");
        assert_eq!(cpu_max(Some(2.0)), "200000 100000");
        assert_eq!(cpu_max(Some(0.001)), "1000 100000");
        assert_eq!(cpu_max(None), "max 100000");
    }

    #[test]
    fn detect_refuses_without_cgroup2_or_controllers() {
        let tmp = tempfile::tempdir().expect("tempdir");
        assert!(Cgroups::detect(tmp.path()).is_err());
        fs::write(tmp.path().join("cgroup.controllers"), "hugetlb pids\n").expect("write");
        let err = Cgroups::detect(tmp.path()).expect_err("no cpu/memory");
        assert!(err.contains("not available"), "{err}");
    }

    #[test]
    fn detect_and_create_on_a_fake_hierarchy() {
        // A plain directory standing in for cgroupfs: checks what is written where.
        let tmp = tempfile::tempdir().expect("tempdir");
        fs::write(
            tmp.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .expect("write");
        fs::write(tmp.path().join("cgroup.subtree_control"), "cpu\n").expect("write");
        let cg = Cgroups::detect(tmp.path()).expect("detect");
        assert!(tmp.path().join("tend").is_dir());
        assert!(
            controller_set(&tmp.path().join("tend/cgroup.subtree_control"))
                .expect("read")
                .contains(&"memory".to_owned())
        );

        let dir = cg
            .create("web-1", Some(64 << 20), Some(0.25))
            .expect("create");
        assert!(cg.owns(&dir));
        assert!(!cg.owns(Path::new("/etc")));
        let read = |f: &str| fs::read_to_string(dir.join(f)).expect("read");
        assert_eq!(read("memory.max"), (64u64 << 20).to_string());
        assert_eq!(read("cpu.max"), "25000 100000");
        assert_eq!(read("memory.oom.group"), "1");
    }

    #[test]
    fn usage_reads_the_accounting_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        assert_eq!(usage(tmp.path()), None, "no memory.current: not a cgroup");
        let w = |f: &str, t: &str| fs::write(tmp.path().join(f), t).expect("write");
        w("memory.current", "1048576\n");
        w(
            "cpu.stat",
            "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 10\nnr_throttled 2\nthrottled_usec 750000\n",
        );
        w("memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n");
        let u = usage(tmp.path()).expect("usage");
        assert_eq!(u.memory_bytes, 1 << 20);
        assert_eq!(u.cpu_seconds, 2.5);
        assert_eq!(u.cpu_throttled_seconds, 0.75);
        assert_eq!(u.oom_kills, 1);
    }
}
