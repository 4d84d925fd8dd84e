//! Tests specific to the process driver (the shared scenarios are in conformance.rs).

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{eventually, spec, KillGuard, DEADLINE};
use tend_runtime::{Handle, LimitSupport, ProcessRuntime, Runtime, RuntimeError, State};

const HELPER_ROOT: &str = "TEND_RUNTIME_TEST_HELPER_ROOT";
const HELPER_RELEASE: &str = "TEND_RUNTIME_TEST_HELPER_RELEASE";

/// A temp dir, a runtime rooted in it, an empty release, and a guard killing every
/// process started under that root when the test ends (declared last: dropped first).
fn setup() -> (
    tempfile::TempDir,
    ProcessRuntime,
    std::path::PathBuf,
    KillGuard,
) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = ProcessRuntime::new(tmp.path().join("instances")).expect("runtime");
    let release = tmp.path().join("release");
    fs::create_dir_all(&release).expect("mkdir");
    let guard = KillGuard::default();
    guard.watch_root(rt.root());
    (tmp, rt, release, guard)
}

fn line_of<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.strip_prefix(prefix))
}

#[tokio::test]
async fn layout_and_handle_file() {
    let (_tmp, rt, release, guard) = setup();
    let h = rt
        .start(&spec("lay-1", &release, "sleep 1000"))
        .await
        .expect("start");
    guard.track(&h);
    let dir = rt.root().join("lay-1");
    assert_eq!(h.work_dir, dir.join("work"));
    assert_eq!(h.stdout_path, dir.join("stdout.log"));
    assert_eq!(h.stderr_path, dir.join("stderr.log"));
    let recorded: Handle =
        serde_json::from_slice(&fs::read(dir.join("handle.json")).expect("handle.json"))
            .expect("json");
    assert_eq!(recorded, h);
    // pgid = pid: the instance leads its own session and group.
    let stat = fs::read_to_string(format!("/proc/{}/stat", h.pid)).expect("stat");
    let fields: Vec<&str> = stat[stat.rfind(')').expect(")") + 1..]
        .split_whitespace()
        .collect();
    assert_eq!(fields[2], h.pid.to_string(), "pgrp");
    assert_eq!(fields[3], h.pid.to_string(), "session");
    // stdin is /dev/null, stdout/stderr are the log files (not pipes).
    let fd = |n: u32| fs::read_link(format!("/proc/{}/fd/{n}", h.pid)).expect("fd link");
    assert_eq!(fd(0), Path::new("/dev/null"));
    assert_eq!(fd(1), h.stdout_path);
    assert_eq!(fd(2), h.stderr_path);

    // A second start of the same id while it runs is refused.
    assert!(matches!(
        rt.start(&spec("lay-1", &release, "true")).await,
        Err(RuntimeError::AlreadyRunning { .. })
    ));
    rt.stop(&h, libc::SIGKILL, Duration::ZERO)
        .await
        .expect("stop");
    assert!(matches!(
        rt.stats(&h).await,
        Err(RuntimeError::NotFound { .. })
    ));
}

#[tokio::test]
async fn path_inherited_home_kept() {
    let (_tmp, rt, release, guard) = setup();
    let mut s = spec(
        "env-1",
        &release,
        "echo \"PATH=$PATH\"; echo \"HOME=$HOME\"",
    );
    s.env.insert("HOME".into(), "/srv/home".into());
    let h = rt.start(&s).await.expect("start");
    guard.track(&h);
    rt.wait(&h).await.expect("wait");
    let out = fs::read_to_string(&h.stdout_path).expect("log");
    assert_eq!(line_of(&out, "HOME="), Some("/srv/home"));
    assert_eq!(
        line_of(&out, "PATH="),
        Some(std::env::var("PATH").unwrap_or_default().as_str())
    );
}

#[tokio::test]
async fn adopted_status_is_unknown() {
    let (tmp, rt, release, guard) = setup();
    let h = rt
        .start(&spec("adopt-1", &release, "sleep 1000"))
        .await
        .expect("start");
    guard.track(&h);
    let rt2 = ProcessRuntime::new(tmp.path().join("instances")).expect("runtime");
    let state = rt2
        .stop(&h, libc::SIGTERM, Duration::from_secs(10))
        .await
        .expect("stop");
    assert_eq!(
        state,
        State::Exited {
            code: None,
            signal: None
        }
    );
    assert_eq!(rt2.wait(&h).await.expect("wait"), state);
    // The daemon that spawned it still knows the real status.
    assert_eq!(
        rt.wait(&h).await.expect("wait"),
        State::Exited {
            code: None,
            signal: Some(libc::SIGTERM)
        }
    );
}

#[tokio::test]
async fn orphans_of_an_exited_leader_are_listed_and_stopped() {
    let (_tmp, rt, release, guard) = setup();
    let h = rt
        .start(&spec(
            "orph-1",
            &release,
            "sleep 1000 & echo $! > bg.pid; exit 0",
        ))
        .await
        .expect("start");
    guard.track(&h);
    assert_eq!(
        rt.wait(&h).await.expect("wait"),
        State::Exited {
            code: Some(0),
            signal: None
        }
    );
    let bg: u32 = fs::read_to_string(h.work_dir.join("bg.pid"))
        .expect("bg.pid")
        .trim()
        .parse()
        .expect("pid");
    assert!(common::pid_alive(bg));
    // The leader is gone but its group lives on: list() still reports the instance.
    assert_eq!(rt.list().await.expect("list"), vec![h.clone()]);
    rt.stop(&h, libc::SIGTERM, Duration::from_secs(10))
        .await
        .expect("stop");
    assert!(!common::pid_alive(bg));
    assert!(rt.list().await.expect("list").is_empty());
    rt.destroy(&h).await.expect("destroy");
}

#[tokio::test]
async fn handles_that_are_not_ours_are_refused() {
    let (_tmp, rt, release, guard) = setup();
    let h = rt
        .start(&spec("own-1", &release, "true"))
        .await
        .expect("start");
    guard.track(&h);
    rt.wait(&h).await.expect("wait");
    let foreign = Handle {
        work_dir: "/".into(),
        ..h.clone()
    };
    assert!(matches!(
        rt.destroy(&foreign).await,
        Err(RuntimeError::InvalidHandle { .. })
    ));
    let init = Handle {
        pid: 1,
        ..h.clone()
    };
    assert!(matches!(
        rt.stop(&init, libc::SIGKILL, Duration::ZERO).await,
        Err(RuntimeError::InvalidHandle { .. })
    ));
    let escape = Handle {
        instance_id: "..".into(),
        ..h.clone()
    };
    assert!(matches!(
        rt.destroy(&escape).await,
        Err(RuntimeError::InvalidHandle { .. })
    ));
    rt.destroy(&h).await.expect("destroy");
}

#[tokio::test]
async fn limits_are_applied_by_the_reported_mechanism() {
    let (_tmp, rt, release, guard) = setup();
    let caps = rt.capabilities();
    let mut s = spec("lim-1", &release, "sleep 1000");
    s.memory_limit = Some(48 << 20);
    s.cpu_limit = Some(0.5);
    let h = rt.start(&s).await.expect("start");
    guard.track(&h);
    match caps.memory_limit {
        LimitSupport::Cgroup => {
            let cg = h.cgroup.clone().expect("cgroup in handle");
            let read = |f: &str| fs::read_to_string(cg.join(f)).expect("cgroup file");
            assert_eq!(read("memory.max").trim(), (48u64 << 20).to_string());
            assert_eq!(read("cpu.max").trim(), "50000 100000");
            assert!(read("cgroup.procs").lines().any(|l| l == h.pid.to_string()));
            assert_eq!(caps.cpu_limit, LimitSupport::Cgroup);
        }
        LimitSupport::Rlimit => {
            assert_eq!(h.cgroup, None);
            let limits = fs::read_to_string(format!("/proc/{}/limits", h.pid)).expect("limits");
            let data = limits
                .lines()
                .find(|l| l.starts_with("Max data size"))
                .expect("data line");
            let values: Vec<&str> = data.split_whitespace().collect();
            let expected = (48u64 << 20).to_string();
            assert_eq!(
                &values[3..5],
                &[expected.as_str(), expected.as_str()],
                "{data}"
            );
            assert_eq!(caps.cpu_limit, LimitSupport::None);
        }
        LimitSupport::None => panic!("the process driver always has a memory mechanism"),
    }
    rt.stop(&h, libc::SIGKILL, Duration::ZERO)
        .await
        .expect("stop");
    rt.destroy(&h).await.expect("destroy");
    if let Some(cg) = &h.cgroup {
        assert!(!cg.exists(), "cgroup removed");
    }
}

/// A plain directory standing in for a cgroup v2 mount: checks the plumbing (what is
/// written where, and that the child moves itself in before exec) on any machine.
#[tokio::test]
async fn cgroup_plumbing_on_a_fake_hierarchy() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mount = tmp.path().join("cgroup");
    fs::create_dir_all(&mount).expect("mkdir");
    fs::write(
        mount.join("cgroup.controllers"),
        "cpuset cpu io memory pids\n",
    )
    .expect("write");
    fs::write(mount.join("cgroup.subtree_control"), "").expect("write");
    // The kernel makes cgroup.procs with the directory; here it must exist beforehand.
    fs::create_dir_all(mount.join("tend/cg-1")).expect("mkdir");
    fs::write(mount.join("tend/cg-1/cgroup.procs"), "").expect("write");
    let rt = ProcessRuntime::with_cgroup_mount(tmp.path().join("instances"), Some(mount.clone()))
        .expect("runtime");
    assert_eq!(rt.capabilities().memory_limit, LimitSupport::Cgroup);
    assert_eq!(rt.capabilities().cpu_limit, LimitSupport::Cgroup);
    let release = tmp.path().join("release");
    fs::create_dir_all(&release).expect("mkdir");

    let guard = KillGuard::default();
    guard.watch_root(rt.root());
    let mut s = spec("cg-1", &release, "echo started");
    s.memory_limit = Some(32 << 20);
    s.cpu_limit = Some(1.5);
    let h = rt.start(&s).await.expect("start");
    guard.track(&h);
    let cg = mount.join("tend/cg-1");
    assert_eq!(h.cgroup.as_deref(), Some(cg.as_path()));
    let read = |f: &str| fs::read_to_string(cg.join(f)).expect("cgroup file");
    assert_eq!(read("memory.max"), (32u64 << 20).to_string());
    assert_eq!(read("cpu.max"), "150000 100000");
    // The child wrote "0" (= itself) to cgroup.procs before exec.
    assert_eq!(read("cgroup.procs"), "0");
    assert_eq!(
        rt.wait(&h).await.expect("wait"),
        State::Exited {
            code: Some(0),
            signal: None
        }
    );

    // The kernel removes control files with the directory; a plain directory needs help.
    for entry in fs::read_dir(&cg).expect("read cgroup") {
        fs::remove_file(entry.expect("entry").path()).expect("rm");
    }
    rt.destroy(&h).await.expect("destroy");
    assert!(!cg.exists());

    // A handle naming some other directory as its cgroup is refused.
    let foreign = Handle {
        cgroup: Some("/sys/fs/cgroup".into()),
        ..h.clone()
    };
    assert!(matches!(
        rt.destroy(&foreign).await,
        Err(RuntimeError::InvalidHandle { .. })
    ));
}

#[tokio::test]
async fn starting_a_10mb_release_is_fast() {
    let (_tmp, rt, release, guard) = setup();
    let chunk = "x".repeat(50 * 1024);
    for d in 0..10 {
        for f in 0..20 {
            let path = release.join(format!("lib{d}/file{f}.dat"));
            fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            fs::write(&path, &chunk).expect("write");
        }
    }
    let t = Instant::now();
    let h = rt
        .start(&spec("big-1", &release, "sleep 1000"))
        .await
        .expect("start");
    let took = t.elapsed();
    guard.track(&h);
    eprintln!("started a 10 MB / 200-file release in {took:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert_eq!(
        fs::read_to_string(h.work_dir.join("lib9/file19.dat"))
            .expect("copied")
            .len(),
        chunk.len()
    );
    rt.stop(&h, libc::SIGKILL, Duration::ZERO)
        .await
        .expect("stop");
}

/// Not a test on its own: the "daemon" process of `instance_survives_daemon_kill`.
/// It starts an instance, prints its handle, and SIGKILLs itself.
#[test]
fn daemon_helper() {
    let (Some(root), Some(release)) = (
        std::env::var_os(HELPER_ROOT),
        std::env::var_os(HELPER_RELEASE),
    ) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    let handle = rt.block_on(async {
        let driver = ProcessRuntime::new(root.into()).expect("runtime");
        let s = spec(
            "daemon-1",
            Path::new(&release),
            "while :; do echo tick; sleep 0.05; done",
        );
        driver.start(&s).await.expect("start")
    });
    let mut out = std::io::stdout().lock();
    // A line of its own: libtest has already printed "test daemon_helper ... ".
    writeln!(
        out,
        "\nHANDLE:{}",
        serde_json::to_string(&handle).expect("json")
    )
    .expect("print");
    out.flush().expect("flush");
    // SAFETY: kill has no memory-safety preconditions; this process dies here, as a daemon might.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
}

#[tokio::test]
async fn instance_survives_daemon_kill() {
    let (tmp, _rt, release, guard) = setup();
    let exe = std::env::current_exe().expect("test binary");
    // If the instance held the daemon's stdout or stderr, reading them to EOF would hang.
    let out = tokio::time::timeout(
        DEADLINE,
        tokio::process::Command::new(exe)
            .args([
                "--exact",
                "daemon_helper",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(HELPER_ROOT, tmp.path().join("instances"))
            .env(HELPER_RELEASE, &release)
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .expect("the dead daemon's pipes were closed: the instance does not hold them")
    .expect("run helper");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = line_of(&stdout, "HANDLE:").unwrap_or_else(|| {
        panic!(
            "no handle from helper; stdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let h: Handle = serde_json::from_str(json).expect("handle json");
    guard.track(&h);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "the daemon was killed"
    );

    let rt = ProcessRuntime::new(tmp.path().join("instances")).expect("runtime");
    assert_eq!(
        rt.recover(&h).await.expect("recover"),
        State::Running {
            pid: h.pid,
            stopped: false
        }
    );
    let before = fs::read_to_string(&h.stdout_path).unwrap_or_default().len();
    eventually(
        "the instance keeps writing after its daemon died",
        DEADLINE,
        || async { fs::read_to_string(&h.stdout_path).unwrap_or_default().len() > before + 20 },
    )
    .await;
    assert_eq!(rt.list().await.expect("list"), vec![h.clone()]);
    let state = rt
        .stop(&h, libc::SIGTERM, Duration::from_secs(10))
        .await
        .expect("stop");
    assert_eq!(
        state,
        State::Exited {
            code: None,
            signal: None
        }
    );
    rt.destroy(&h).await.expect("destroy");
}
