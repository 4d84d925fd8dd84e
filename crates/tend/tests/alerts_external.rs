//! Alerting through external systems: e-mail through an SMTP relay (a small
//! SMTP server in the test is the relay), and forwarding to a real
//! Alertmanager (Debian's `prometheus-alertmanager`) that routes to a
//! webhook receiver in the test.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::platform::*;
use common::receiver::Receiver;
use common::*;
use serde_json::Value;

/// A line-based SMTP server on an ephemeral port that accepts every mail
/// and keeps its DATA (headers and body), until dropped.
struct SmtpSink {
    port: u16,
    mails: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SmtpSink {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let mails: Arc<Mutex<Vec<String>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (mails.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        conn.set_nonblocking(false).unwrap();
                        conn.set_read_timeout(Some(Duration::from_secs(10)))
                            .unwrap();
                        let _ = Self::session(conn, &m);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Self {
            port,
            mails,
            stop,
            thread: Some(thread),
        }
    }

    fn session(conn: TcpStream, mails: &Mutex<Vec<String>>) -> std::io::Result<()> {
        let mut out = conn.try_clone()?;
        let mut lines = BufReader::new(conn);
        out.write_all(b"220 sink.test ESMTP\r\n")?;
        let mut line = String::new();
        loop {
            line.clear();
            if lines.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let verb = line.trim_end().to_ascii_uppercase();
            if verb.starts_with("EHLO") {
                out.write_all(b"250-sink.test\r\n250 8BITMIME\r\n")?;
            } else if verb.starts_with("DATA") {
                out.write_all(b"354 end with <CRLF>.<CRLF>\r\n")?;
                let mut data = String::new();
                loop {
                    line.clear();
                    if lines.read_line(&mut line)? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" {
                        break;
                    }
                    data.push_str(line.strip_prefix('.').unwrap_or(&line));
                }
                mails.lock().unwrap().push(data);
                out.write_all(b"250 queued\r\n")?;
            } else if verb.starts_with("QUIT") {
                out.write_all(b"221 bye\r\n")?;
                return Ok(());
            } else {
                // HELO, MAIL FROM, RCPT TO, RSET, NOOP.
                out.write_all(b"250 ok\r\n")?;
            }
        }
    }

    fn mails(&self) -> Vec<String> {
        self.mails.lock().unwrap().clone()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A header's value with its folding undone.
fn header(mail: &str, name: &str) -> Option<String> {
    let head = mail.split("\r\n\r\n").next()?;
    let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ");
    unfolded.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An always-true rule: fires at its first evaluation, as an `info` alert
/// (to the team's channels, no paging).
const ALWAYS: &str = "\n[[alerts]]\nname = \"always-on\"\nexpr = 'vector(1)'\nseverity = \"info\"\nsummary = \"web is being watched\"\n";

#[test]
fn email_channels_get_the_incident_through_the_smtp_relay() {
    let sink = SmtpSink::start();
    let smtp = format!("smtp://127.0.0.1:{}", sink.port);
    let server = TestServer::start_with(&[
        "--alert-interval",
        "500ms",
        "--smtp-url",
        &smtp,
        "--smtp-from",
        "tend <tend@example.test>",
    ]);
    let p = Platform {
        admin: server.admin_token(),
        server,
    };
    let _cleanup = KillInstances(p.server.data_dir.clone());
    ok(&p.tend(&["teams", "create", "payments"]));
    p.add_channel("payments", "mail", "--email", "oncall@example.test", &[]);
    ok(&p.deploy(&ServiceDir::new("web", 1, &[], ALWAYS)));

    wait_until(Duration::from_secs(60), "the incident e-mail", || {
        !sink.mails().is_empty()
    });
    let mail = sink.mails().remove(0);
    let subject = header(&mail, "Subject").unwrap_or_default();
    assert!(subject.contains("triggered"), "{mail}");
    assert!(subject.contains("service web"), "{subject}");
    assert!(subject.contains("team payments"), "{subject}");
    assert!(
        header(&mail, "To")
            .unwrap_or_default()
            .contains("oncall@example.test"),
        "{mail}"
    );
    assert!(
        header(&mail, "From")
            .unwrap_or_default()
            .contains("tend@example.test"),
        "{mail}"
    );
    let body = mail.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    assert!(body.contains("Service: web"), "{body}");
    assert!(body.contains("Team: payments"), "{body}");
    assert!(body.contains("always-on"), "{body}");
    // What changed: the deploy that just happened.
    assert!(body.contains("What changed"), "{body}");
    assert!(body.contains("deploy."), "{body}");
    assert!(body.contains("tend rollback web"), "{body}");

    // The delivery log says it went out.
    let list: Value = serde_json::from_str(&ok(&p.tend(&[
        "incidents",
        "--team",
        "payments",
        "-o",
        "json",
    ])))
    .unwrap();
    let id = list[0]["id"].as_i64().unwrap().to_string();
    wait_until(Duration::from_secs(10), "the delivery logged", || {
        let d: Value =
            serde_json::from_str(&ok(&p.tend(&["incidents", "show", &id, "-o", "json"]))).unwrap();
        d["deliveries"].as_array().is_some_and(|l| {
            l.iter()
                .any(|n| n["channel"] == "mail" && n["status"] == "delivered")
        })
    });
}

#[test]
fn email_without_a_relay_is_a_visible_failed_delivery() {
    let p = Platform::start();
    let _cleanup = KillInstances(p.server.data_dir.clone());
    p.add_channel("payments", "mail", "--email", "oncall@example.test", &[]);
    // Default interval (5 s): a few evaluations within the wait.
    ok(&p.deploy(&ServiceDir::new("web", 1, &[], ALWAYS)));
    wait_until(Duration::from_secs(60), "the failed delivery", || {
        let list: Value = serde_json::from_str(&ok(&p.tend(&[
            "incidents",
            "--team",
            "payments",
            "-o",
            "json",
        ])))
        .unwrap();
        let Some(id) = list[0]["id"].as_i64() else {
            return false;
        };
        let d: Value = serde_json::from_str(&ok(&p.tend(&[
            "incidents",
            "show",
            &id.to_string(),
            "-o",
            "json",
        ])))
        .unwrap();
        d["deliveries"].as_array().is_some_and(|l| {
            l.iter().any(|n| {
                n["channel"] == "mail"
                    && n["status"] == "failed"
                    && n.to_string().contains("--smtp-url")
            })
        })
    });
}

/// A real Alertmanager on an ephemeral port, killed on drop.
struct Alertmanager {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";

impl Alertmanager {
    fn start(webhook: &str) -> Self {
        assert!(
            Path::new(ALERTMANAGER).exists(),
            "{ALERTMANAGER} is missing: apt-get install -y prometheus-alertmanager"
        );
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(
            &config,
            format!(
                "route:\n  receiver: test\n  group_by: [service]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n\
                 receivers:\n  - name: test\n    webhook_configs:\n      - url: {webhook}\n        send_resolved: true\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new(ALERTMANAGER)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let am = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let ready = format!("{}/-/ready", am.url);
        wait_until(Duration::from_secs(30), "Alertmanager ready", || {
            reqwest::blocking::get(&ready).is_ok_and(|r| r.status().is_success())
        });
        am
    }

    /// `GET /api/v2/alerts`: the alerts Alertmanager holds as active.
    fn alerts(&self) -> Vec<Value> {
        reqwest::blocking::get(format!("{}/api/v2/alerts", self.url))
            .and_then(|r| r.json::<Value>())
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn alerts_are_forwarded_to_a_real_alertmanager_and_resolve_there() {
    let hook = Receiver::start(0);
    let am = Alertmanager::start(&hook.url);
    let server =
        TestServer::start_with(&["--alert-interval", "500ms", "--alertmanager-url", &am.url]);
    let p = Platform {
        admin: server.admin_token(),
        server,
    };
    let _cleanup = KillInstances(p.server.data_dir.clone());
    ok(&p.tend(&["teams", "create", "payments"]));
    let mut web = ServiceDir::new("web", 1, &[], ALWAYS);
    ok(&p.deploy(&web));

    let ours =
        |a: &Value| a["labels"]["alertname"] == "always-on" && a["labels"]["service"] == "web";
    wait_until(Duration::from_secs(60), "the alert in Alertmanager", || {
        am.alerts().iter().any(ours)
    });
    let held = am.alerts().into_iter().find(|a| ours(a)).unwrap();
    assert_eq!(held["labels"]["team"], "payments");
    assert_eq!(held["labels"]["severity"], "info");
    assert_eq!(held["annotations"]["summary"], "web is being watched");
    assert_eq!(held["status"]["state"], "active");
    assert!(
        held["generatorURL"]
            .as_str()
            .unwrap()
            .contains("/api/v1/incidents"),
        "{held}"
    );

    // Alertmanager routes it on to its own receiver.
    let from_am = |status: &str| {
        hook.bodies().into_iter().any(|(_, b)| {
            b["status"] == status
                && b["alerts"]
                    .as_array()
                    .is_some_and(|l| l.iter().any(|a| ours(a) && a["status"] == status))
        })
    };
    wait_until(
        Duration::from_secs(30),
        "Alertmanager's webhook (firing)",
        || from_am("firing"),
    );

    // The rule goes away: the alert resolves, tend sends its endsAt, and
    // Alertmanager tells its receiver and stops holding it as active.
    web.write("web", 1, &[], "");
    ok(&p.deploy(&web));
    wait_until(
        Duration::from_secs(60),
        "Alertmanager's webhook (resolved)",
        || from_am("resolved"),
    );
    wait_until(
        Duration::from_secs(30),
        "the alert gone from Alertmanager",
        || !am.alerts().iter().any(ours),
    );
}
