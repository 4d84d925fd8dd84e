//! A platform with one team and sample-app services, for tests that deploy.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::*;

/// A service directory with the sample app as `./app` and a manifest.
pub struct ServiceDir {
    dir: tempfile::TempDir,
}

impl ServiceDir {
    pub fn new(name: &str, instances: u32, env: &[(&str, &str)], extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            env!("CARGO_BIN_EXE_tend-sample-app"),
            dir.path().join("app"),
        )
        .unwrap();
        let mut s = Self { dir };
        s.write(name, instances, env, extra);
        s
    }

    /// Rewrites the manifest (a new deploy of it makes a new release).
    pub fn write(&mut self, name: &str, instances: u32, env: &[(&str, &str)], extra: &str) {
        let mut env_toml = String::new();
        for (k, v) in env {
            env_toml.push_str(&format!("{k} = \"{v}\"\n"));
        }
        let manifest = format!(
            "[service]\nname = \"{name}\"\nowner = \"payments\"\n\n\
             [run]\ncommand = \"./app\"\ninstances = {instances}\ngrace_period = \"3s\"\n\n\
             [health]\nhttp = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"500ms\"\nunhealthy_threshold = 3\nstart_period = \"1s\"\n\n\
             [deploy]\nverify = \"1s\"\nhealthy_deadline = \"5s\"\n{extra}\n\
             [env]\n{env_toml}"
        );
        std::fs::write(self.dir.path().join("tend.toml"), manifest).unwrap();
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

pub struct Platform {
    pub server: TestServer,
    pub admin: String,
}

impl Platform {
    pub fn start() -> Self {
        let server = TestServer::start();
        let admin = server.admin_token();
        ok(&server.cli(&admin, &["teams", "create", "payments"]));
        Self { server, admin }
    }

    pub fn tend(&self, args: &[&str]) -> std::process::Output {
        self.server.cli(&self.admin, args)
    }

    /// Adds a notification channel: `kind` is `--webhook`, `--email`, `--pagerduty`
    /// or `--slack`; `extra` more flags (`--member alice`).
    pub fn add_channel(&self, team: &str, name: &str, kind: &str, target: &str, extra: &[&str]) {
        let mut args = vec![
            "teams", "channels", "add", team, "--name", name, kind, target,
        ];
        args.extend_from_slice(extra);
        ok(&self.tend(&args));
    }

    pub fn deploy(&self, dir: &ServiceDir) -> std::process::Output {
        self.tend(&["deploy", dir.path().to_str().unwrap()])
    }

    pub fn status(&self, name: &str) -> Value {
        let o = self.tend(&["status", name, "-o", "json"]);
        serde_json::from_str(&ok(&o)).unwrap()
    }

    pub fn wait_status(
        &self,
        name: &str,
        what: &str,
        mut cond: impl FnMut(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = self.status(name);
            if cond(&s) {
                return s;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; status: {s:#}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub fn instances(s: &Value) -> Vec<Value> {
    s["instances"].as_array().cloned().unwrap_or_default()
}

pub fn ready_count(s: &Value) -> usize {
    instances(s)
        .iter()
        .filter(|i| i["state"] == "ready")
        .count()
}

pub fn pids(s: &Value) -> BTreeSet<u64> {
    instances(s)
        .iter()
        .filter_map(|i| i["pid"].as_u64())
        .collect()
}

/// GETs `/` of every ready instance directly and returns their releases.
pub fn serving_releases(s: &Value) -> BTreeSet<String> {
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    instances(s)
        .iter()
        .filter(|i| i["state"] == "ready")
        .map(|i| {
            let port = i["port"].as_u64().unwrap();
            let body: Value = http
                .get(format!("http://127.0.0.1:{port}/"))
                .send()
                .unwrap()
                .json()
                .unwrap();
            body["release"].as_str().unwrap_or_default().to_string()
        })
        .collect()
}

/// Processes on this machine started by this data directory's runtime.
pub fn runtime_processes(data_dir: &Path) -> Vec<(u32, String)> {
    let root = std::fs::canonicalize(data_dir.join("instances"))
        .unwrap_or_else(|_| data_dir.join("instances"));
    let marker = format!("TEND_RUNTIME_ROOT={}", root.display());
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let vars: Vec<String> = env
            .split(|b| *b == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        if !vars.iter().any(|v| v == &marker) {
            continue;
        }
        // Only group leaders (the instance's shell or app), not their children.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        if fields.first() == Some(&"Z") || fields.get(2) != Some(&pid.to_string().as_str()) {
            continue;
        }
        let inst = vars
            .iter()
            .find_map(|v| v.strip_prefix("TEND_INSTANCE="))
            .unwrap_or("")
            .to_string();
        out.push((pid, inst));
    }
    out
}

/// Kills every instance process of a data directory (cleanup at test end:
/// instances outlive the server by design).
pub struct KillInstances(pub PathBuf);

impl Drop for KillInstances {
    fn drop(&mut self) {
        for (pid, _) in runtime_processes(&self.0) {
            // SAFETY: killpg on a process group this test's server created.
            unsafe { libc::killpg(pid as i32, libc::SIGKILL) };
        }
    }
}
