//! Health probes with Kubernetes semantics, and the bookkeeping of their results.
//!
//! One check per instance plays both probe roles: it gates traffic (readiness:
//! `healthy_threshold` successes in a row make an instance ready,
//! `unhealthy_threshold` failures take it out) and it restarts hung or broken
//! processes (liveness: the same failures, counted only after `start_period`
//! or after the instance was once healthy).

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

use tend_manifest::{HealthCheck, HealthSection};

/// Outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// Whether the probe passed.
    pub ok: bool,
    /// What it saw (`HTTP 200`, `connection refused`, `timed out after 1s`).
    pub detail: String,
}

/// Runs one probe of `check` against an instance on `port`.
pub async fn probe(
    http: &reqwest::Client,
    check: &HealthCheck,
    port: u16,
    timeout: Duration,
    work_dir: &Path,
) -> ProbeResult {
    let fut = async {
        match check {
            HealthCheck::Http { path } => {
                let url = format!("http://127.0.0.1:{port}{path}");
                match http.get(&url).send().await {
                    Ok(r) => {
                        let s = r.status();
                        ProbeResult {
                            ok: s.is_success() || s.is_redirection(),
                            detail: format!("GET {path}: HTTP {}", s.as_u16()),
                        }
                    }
                    Err(e) => ProbeResult {
                        ok: false,
                        detail: format!("GET {path}: {}", short_error(&e)),
                    },
                }
            }
            HealthCheck::Tcp => match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                Ok(_) => ProbeResult {
                    ok: true,
                    detail: format!("tcp :{port}: connected"),
                },
                Err(e) => ProbeResult {
                    ok: false,
                    detail: format!("tcp :{port}: {e}"),
                },
            },
            HealthCheck::Exec { command: cmd } => {
                let out = tokio::process::Command::new("/bin/sh")
                    .arg("-c")
                    .arg(cmd)
                    .current_dir(work_dir)
                    .env("PORT", port.to_string())
                    .stdin(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .output()
                    .await;
                match out {
                    Ok(o) => ProbeResult {
                        ok: o.status.success(),
                        detail: format!(
                            "exec `{cmd}`: {}",
                            crate::describe_exit(o.status.code(), {
                                use std::os::unix::process::ExitStatusExt;
                                o.status.signal()
                            })
                        ),
                    },
                    Err(e) => ProbeResult {
                        ok: false,
                        detail: format!("exec `{cmd}`: {e}"),
                    },
                }
            }
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => ProbeResult {
            ok: false,
            detail: format!(
                "{}: timed out after {}",
                describe(check),
                tend_manifest::format_duration(timeout)
            ),
        },
    }
}

fn describe(check: &HealthCheck) -> String {
    match check {
        HealthCheck::Http { path } => format!("GET {path}"),
        HealthCheck::Tcp => "tcp".into(),
        HealthCheck::Exec { command } => format!("exec `{command}`"),
    }
}

fn short_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection refused".into()
    } else {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(inner) = src {
            s = inner.to_string();
            src = inner.source();
        }
        s
    }
}

/// What the controller should do after a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing changed.
    Same,
    /// The instance became ready.
    BecameReady,
    /// The instance stopped being ready.
    BecameUnready,
    /// The instance failed its liveness: replace it.
    Restart,
}

/// Probe history and state of one instance.
#[derive(Debug, Clone)]
pub struct Health {
    started: Instant,
    successes: u32,
    failures: u32,
    ever_ready: bool,
    ready: bool,
    /// The latest results, newest last (for failure reports).
    pub recent: VecDeque<(std::time::SystemTime, ProbeResult)>,
}

const RECENT: usize = 10;

impl Health {
    /// A new instance's health, started now.
    pub fn new(started: Instant) -> Self {
        Self {
            started,
            successes: 0,
            failures: 0,
            ever_ready: false,
            ready: false,
            recent: VecDeque::new(),
        }
    }

    /// Whether the instance receives traffic.
    pub fn ready(&self) -> bool {
        self.ready
    }

    /// Marks an adopted instance as ready as it was before a daemon restart, so
    /// traffic does not stop while its first probe is pending.
    pub fn assume_ready(&mut self) {
        self.ready = true;
        self.ever_ready = true;
    }

    /// Records a probe result under `spec` and says what follows.
    pub fn record(&mut self, spec: &HealthSection, r: ProbeResult, now: Instant) -> Verdict {
        let ok = r.ok;
        self.recent.push_back((std::time::SystemTime::now(), r));
        while self.recent.len() > RECENT {
            self.recent.pop_front();
        }
        if ok {
            self.successes += 1;
            self.failures = 0;
            if !self.ready && self.successes >= spec.healthy_threshold {
                self.ready = true;
                self.ever_ready = true;
                return Verdict::BecameReady;
            }
            return Verdict::Same;
        }
        self.successes = 0;
        let in_start_period =
            !self.ever_ready && now.duration_since(self.started) < spec.start_period;
        if in_start_period {
            return Verdict::Same;
        }
        self.failures += 1;
        if self.failures >= spec.unhealthy_threshold {
            self.ready = false;
            return Verdict::Restart;
        }
        if self.ready
            && self.failures >= 1
            && spec.unhealthy_threshold > 1
            && self.failures * 2 >= spec.unhealthy_threshold
        {
            // Half-way to a restart: stop sending traffic already.
            self.ready = false;
            return Verdict::BecameUnready;
        }
        Verdict::Same
    }

    /// The recent probe results as lines for people.
    pub fn report(&self) -> Vec<String> {
        self.recent
            .iter()
            .map(|(at, r)| {
                format!(
                    "{} {} {}",
                    humantime_rfc3339(*at),
                    if r.ok { "ok  " } else { "FAIL" },
                    r.detail
                )
            })
            .collect()
    }
}

fn humantime_rfc3339(t: std::time::SystemTime) -> String {
    tend_core::Timestamp::from_system_time(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(healthy: u32, unhealthy: u32, start: Duration) -> HealthSection {
        HealthSection {
            check: HealthCheck::Tcp,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_threshold: healthy,
            unhealthy_threshold: unhealthy,
            start_period: start,
        }
    }

    fn ok() -> ProbeResult {
        ProbeResult {
            ok: true,
            detail: "ok".into(),
        }
    }

    fn fail() -> ProbeResult {
        ProbeResult {
            ok: false,
            detail: "refused".into(),
        }
    }

    #[test]
    fn start_period_forgives_failures_until_first_ready() {
        let t0 = Instant::now();
        let s = spec(1, 2, Duration::from_secs(30));
        let mut h = Health::new(t0);
        for _ in 0..10 {
            assert_eq!(
                h.record(&s, fail(), t0 + Duration::from_secs(1)),
                Verdict::Same
            );
        }
        assert_eq!(
            h.record(&s, ok(), t0 + Duration::from_secs(2)),
            Verdict::BecameReady
        );
        // Once ready, failures count at once.
        assert_eq!(
            h.record(&s, fail(), t0 + Duration::from_secs(3)),
            Verdict::BecameUnready
        );
        assert_eq!(
            h.record(&s, fail(), t0 + Duration::from_secs(4)),
            Verdict::Restart
        );
        assert_eq!(h.report().len(), 13.min(RECENT));
    }

    #[test]
    fn never_healthy_after_start_period_restarts() {
        let t0 = Instant::now();
        let s = spec(2, 3, Duration::from_secs(5));
        let mut h = Health::new(t0);
        let late = t0 + Duration::from_secs(6);
        assert_eq!(h.record(&s, fail(), late), Verdict::Same);
        assert_eq!(h.record(&s, fail(), late), Verdict::Same);
        assert_eq!(h.record(&s, fail(), late), Verdict::Restart);
        // Healthy threshold of two.
        let mut h = Health::new(t0);
        assert_eq!(h.record(&s, ok(), t0), Verdict::Same);
        assert_eq!(h.record(&s, ok(), t0), Verdict::BecameReady);
    }

    #[tokio::test]
    async fn probes_tcp_and_http_and_exec() {
        let http = reqwest::Client::new();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let r = probe(
            &http,
            &HealthCheck::Tcp,
            port,
            Duration::from_secs(2),
            dir.path(),
        )
        .await;
        assert!(r.ok, "{r:?}");
        drop(l);
        let r = probe(
            &http,
            &HealthCheck::Tcp,
            port,
            Duration::from_secs(2),
            dir.path(),
        )
        .await;
        assert!(!r.ok);
        let r = probe(
            &http,
            &HealthCheck::Http {
                path: "/healthz".into(),
            },
            port,
            Duration::from_secs(2),
            dir.path(),
        )
        .await;
        assert!(!r.ok && r.detail.contains("refused"), "{r:?}");
        let r = probe(
            &http,
            &HealthCheck::Exec {
                command: "test \"$PORT\" -gt 0".into(),
            },
            port,
            Duration::from_secs(2),
            dir.path(),
        )
        .await;
        assert!(r.ok, "{r:?}");
        let r = probe(
            &http,
            &HealthCheck::Exec {
                command: "sleep 5".into(),
            },
            port,
            Duration::from_millis(200),
            dir.path(),
        )
        .await;
        assert!(!r.ok && r.detail.contains("timed out"), "{r:?}");
    }
}
