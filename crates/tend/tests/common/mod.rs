//! Test harness: runs the real `tend` binary (server and CLI) on ephemeral
//! ports with temporary data directories, and stops every process it starts.

#![allow(dead_code)]

pub mod platform;
pub mod receiver;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Path of the binary under test.
pub fn tend_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tend")
}

/// The repository's root (for examples/ and docs/).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A running `tend server`, killed on drop.
pub struct TestServer {
    child: Option<Child>,
    pub url: String,
    /// The router's base URL (`http://127.0.0.1:PORT`).
    pub router_url: String,
    pub data_dir: PathBuf,
    /// Everything the server printed on stdout so far.
    stdout: std::sync::Arc<std::sync::Mutex<String>>,
    _tmp: Option<tempfile::TempDir>,
}

impl TestServer {
    /// Starts a server on a fresh temporary data directory.
    pub fn start() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let mut s = Self::start_in(&dir);
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server on a fresh temporary data directory with extra `tend server` flags.
    pub fn start_with(extra: &[&str]) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let mut s = Self::start_in_with(&dir, extra);
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server on `data_dir` (which may hold an earlier server's state).
    pub fn start_in(data_dir: &Path) -> Self {
        Self::start_in_with(data_dir, &[])
    }

    fn start_in_with(data_dir: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(tend_bin())
            .args([
                "server",
                "--listen",
                "127.0.0.1:0",
                "--router-listen",
                "127.0.0.1:0",
                // Tests want metrics without waiting ten seconds.
                "--scrape-interval",
                "300ms",
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tend server");
        let stderr = child.stderr.take().expect("stderr");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel::<String>();
        let (rtx, rrx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("tend server listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
                if let Some(url) = line.strip_prefix("tend router listening on ") {
                    let _ = rtx.send(url.trim().to_string());
                }
                eprintln!("[server] {line}");
            }
        });
        let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let out2 = out.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut o = out2.lock().unwrap();
                o.push_str(&line);
                o.push('\n');
            }
        });
        let mut server = Self {
            child: Some(child),
            url: String::new(),
            router_url: String::new(),
            data_dir: data_dir.to_path_buf(),
            stdout: out,
            _tmp: None,
        };
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => server.url = url,
            Err(_) => panic!("tend server did not report its address within 60s"),
        }
        match rrx.recv_timeout(Duration::from_secs(10)) {
            Ok(url) => server.router_url = url,
            Err(_) => panic!("tend server did not report its router's address"),
        }
        wait_until(Duration::from_secs(30), "server healthy", || {
            reqwest::blocking::get(format!("{}/healthz", server.url))
                .map(|r| r.status().is_success())
                .unwrap_or(false)
        });
        server
    }

    /// What the server printed on stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// The admin token written at first start.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.token"))
            .expect("admin.token")
            .trim()
            .to_string()
    }

    /// Kills the server (SIGKILL) if it runs and starts it again on the same
    /// data directory.
    pub fn restart(&mut self) {
        self.kill9();
        let mut fresh = Self::start_in(&self.data_dir);
        // Keep our temporary directory alive: it holds the data directory.
        fresh._tmp = self._tmp.take();
        *self = fresh;
    }

    /// Kills the server with SIGKILL and waits for it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits for a clean exit, returning its status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let pid = c.id() as i32;
        // SAFETY: kill(2) on the pid of a child we have not reaped yet.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("server did not stop within 30s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs the CLI against this server with `token`.
    pub fn cli(&self, token: &str, args: &[&str]) -> Output {
        cli_with(args, &[("TEND_URL", &self.url), ("TEND_TOKEN", token)])
    }

    /// An HTTP client.
    pub fn http(&self) -> reqwest::blocking::Client {
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs the CLI with `env` set and an isolated config directory.
pub fn cli_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    let cfg = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(tend_bin());
    cmd.args(args)
        .env_remove("TEND_URL")
        .env_remove("TEND_TOKEN")
        .env("XDG_CONFIG_HOME", cfg.path())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run tend")
}

/// Stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success, showing the output if not.
#[track_caller]
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "command failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

/// Polls `cond` until true, failing after `timeout`.
#[track_caller]
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}
