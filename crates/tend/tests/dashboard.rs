//! The web dashboard end to end: the real server with the example services,
//! driven by headless Chromium through chromedriver (Debian packages
//! `chromium` and `chromium-driver`), plus its session rules over plain HTTP.
//!
//! `UPDATE_SCREENSHOTS=1 cargo test -p tend --test dashboard` also writes
//! the screenshots under docs/screenshots/.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::platform::{KillInstances, ServiceDir};
use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

// ------------------------------------------------------------- harness

/// A chromedriver on an ephemeral port and one headless Chromium session;
/// both stopped on drop (the session first, then the whole process group).
struct Browser {
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
    _profile: tempfile::TempDir,
    /// The server's base URL.
    base: String,
}

fn chromedriver_bin() -> String {
    std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into())
}

fn chromium_bin() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

impl Browser {
    fn start(base: &str) -> Self {
        use std::os::unix::process::CommandExt;
        let mut driver = Command::new(chromedriver_bin())
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // Its own process group, so drop can stop Chromium with it.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e} (apt-get install chromium chromium-driver)",
                    chromedriver_bin()
                )
            });
        let mut out = driver.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // The port is announced without a newline after it: read bytes.
            let mut seen = String::new();
            let mut buf = [0u8; 256];
            let mut sent = false;
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                if !sent {
                    if let Some(rest) = seen.split("started successfully on port ").nth(1) {
                        let digits: String =
                            rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                        if rest.len() > digits.len() && !digits.is_empty() {
                            let _ = tx.send(digits.parse::<u16>().ok());
                            sent = true;
                        }
                    }
                }
            }
        });
        let mut browser = Self {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            client: None,
            driver,
            _profile: tempfile::tempdir().expect("tempdir"),
            base: base.to_string(),
        };
        let port = rx
            .recv_timeout(Duration::from_secs(30))
            .ok()
            .flatten()
            .expect("chromedriver did not report its port within 30s");
        let profile = browser._profile.path().display().to_string();
        let caps = json!({
            "goog:chromeOptions": {
                "binary": chromium_bin(),
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--hide-scrollbars",
                    "--window-size=1280,800",
                    format!("--user-data-dir={profile}"),
                ]
            }
        });
        let caps = caps.as_object().cloned().expect("object");
        let client = browser
            .rt
            .block_on(async {
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(caps)
                    .connect(&format!("http://127.0.0.1:{port}"))
                    .await
            })
            .expect("start a Chromium session");
        browser.client = Some(client);
        browser
    }

    fn c(&self) -> &Client {
        self.client.as_ref().expect("session")
    }

    fn goto(&self, path: &str) {
        let url = format!("{}{path}", self.base);
        self.rt
            .block_on(self.c().goto(&url))
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.rt
            .block_on(self.c().execute(script, args))
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Text of every element matching `css`.
    fn texts(&self, css: &str) -> Vec<String> {
        let v = self.js(
            "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent.trim())",
            vec![json!(css)],
        );
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|x| x.as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn count(&self, css: &str) -> usize {
        self.texts(css).len()
    }

    /// Waits until `cond` holds on the page, or fails saying `what`.
    #[track_caller]
    fn wait(&self, what: &str, timeout: Duration, mut cond: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if cond(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let text = self.js("return document.body.innerText", vec![]);
        panic!(
            "timed out after {timeout:?} waiting for {what}; page text:\n{}",
            text.as_str().unwrap_or_default()
        );
    }

    fn type_into(&self, css: &str, text: &str) {
        self.rt.block_on(async {
            let e = self.c().find(Locator::Css(css)).await.expect("find input");
            e.clear().await.expect("clear");
            e.send_keys(text).await.expect("type");
        })
    }

    fn click(&self, css: &str) {
        self.rt.block_on(async {
            let e = self
                .c()
                .find(Locator::Css(css))
                .await
                .unwrap_or_else(|e| panic!("find {css}: {e}"));
            e.click()
                .await
                .unwrap_or_else(|e| panic!("click {css}: {e}"));
        })
    }

    fn path(&self) -> String {
        self.js("return location.pathname + location.search", vec![])
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn log_in(&self, token: &str) {
        self.goto("/ui");
        self.type_into("#token", token);
        self.click("form[action='/ui/login'] button[type=submit]");
        self.wait("the catalog after login", Duration::from_secs(15), |b| {
            b.texts("main h1") == ["Services"]
        });
    }

    fn log_out(&self) {
        self.click("form[action='/ui/logout'] button");
        self.wait("the login form", Duration::from_secs(15), |b| {
            b.count("#token") == 1
        });
    }

    /// Sizes the viewport (not the window) to `w`×`h` CSS pixels.
    fn viewport(&self, w: u32, h: u32) {
        self.rt
            .block_on(self.c().set_window_size(w, h))
            .expect("resize");
        let inner = self.js("return [window.innerWidth, window.innerHeight]", vec![]);
        let (iw, ih) = (
            inner[0].as_u64().unwrap_or(w as u64) as u32,
            inner[1].as_u64().unwrap_or(h as u64) as u32,
        );
        if (iw, ih) != (w, h) {
            self.rt
                .block_on(
                    self.c()
                        .set_window_size(w + w - iw.min(w), h + h - ih.min(h)),
                )
                .expect("resize");
        }
    }

    fn screenshot(&self, file: &Path) {
        let png = self.rt.block_on(self.c().screenshot()).expect("screenshot");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(file, png).expect("write screenshot");
    }

    /// Fails if the page is wider than the viewport (content cut off on a phone).
    #[track_caller]
    fn assert_no_horizontal_scroll(&self, page: &str) {
        let v = self.js(
            "return [document.documentElement.scrollWidth, window.innerWidth]",
            vec![],
        );
        let (sw, iw) = (v[0].as_u64().unwrap(), v[1].as_u64().unwrap());
        assert!(sw <= iw + 1, "{page} is {sw}px wide in a {iw}px viewport");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(10), c.close()).await });
        }
        // SAFETY: killpg on the process group of the chromedriver we started
        // (Chromium runs in it too).
        unsafe {
            libc::killpg(self.driver.id() as i32, libc::SIGKILL);
        }
        let _ = self.driver.wait();
    }
}

// ------------------------------------------------------------ platform

/// The server with the example teams (payments: alice; storefront: bob).
struct Examples {
    server: TestServer,
    admin: String,
    alice: String,
    bob: String,
    stage: tempfile::TempDir,
}

fn token(server: &TestServer, admin: &str, name: &str, team: &str) -> String {
    ok(&server.cli(admin, &["tokens", "create", "--name", name, "--team", team]))
        .trim()
        .to_string()
}

impl Examples {
    fn start() -> Self {
        // Alert rules evaluated twice a second, so an incident opens quickly.
        let server = TestServer::start_with(&["--alert-interval", "500ms"]);
        let admin = server.admin_token();
        for team in ["payments", "storefront"] {
            ok(&server.cli(&admin, &["teams", "create", team]));
        }
        let alice = token(&server, &admin, "alice", "payments");
        let bob = token(&server, &admin, "bob", "storefront");
        Self {
            server,
            admin,
            alice,
            bob,
            stage: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// A copy of `examples/services/<name>` with the sample app beside its
    /// manifest, as `tend demo` stages them.
    fn staged(&self, name: &str) -> PathBuf {
        let dir = self.stage.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            repo_root()
                .join("examples/services")
                .join(name)
                .join("tend.toml"),
            dir.join("tend.toml"),
        )
        .unwrap();
        std::fs::copy(
            env!("CARGO_BIN_EXE_tend-sample-app"),
            dir.join("sample-app"),
        )
        .unwrap();
        dir
    }

    fn deploy(&self, name: &str) {
        let dir = self.staged(name);
        ok(&self
            .server
            .cli(&self.admin, &["deploy", dir.to_str().unwrap()]));
    }

    fn api(&self, token: &str, path: &str) -> Value {
        self.server
            .http()
            .get(format!("{}/api/v1{path}", self.server.url))
            .bearer_auth(token)
            .send()
            .unwrap()
            .json()
            .unwrap()
    }

    /// Asserts the audit trail's last entries hold `action` by `actor` with `outcome`.
    fn assert_audited(&self, action: &str, actor: &str, outcome: &str) {
        let audit = self.api(&self.admin, "/audit?limit=20");
        assert!(
            audit
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["action"] == action && e["actor"] == actor && e["outcome"] == outcome),
            "no {action} by {actor} ({outcome}) in {audit:#}"
        );
    }

    /// Sends `n` requests through the router to `host`'s `path`.
    fn traffic(&self, host: &str, path: &str, n: usize) {
        let http = self.server.http();
        for _ in 0..n {
            let r = http
                .get(format!("{}{path}", self.server.router_url))
                .header("host", host)
                .send()
                .unwrap();
            assert!(r.status().as_u16() < 500 || path.starts_with("/status/5"));
        }
    }
}

/// Where the screenshots go, when asked to write them.
fn screenshots_dir() -> Option<PathBuf> {
    std::env::var_os("UPDATE_SCREENSHOTS").map(|_| {
        let d = repo_root().join("docs/screenshots");
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

/// Every signed-in page at desktop and phone widths into `dir`.
fn shoot(b: &Browser, d: &Path) {
    for (w, h, kind) in [(1280, 800, "desktop"), (390, 844, "phone")] {
        b.viewport(w, h);
        for (page, path) in [
            ("catalog", "/ui"),
            ("incidents", "/ui/incidents"),
            ("service", "/ui/services/checkout?window=15m"),
            ("teams", "/ui/teams"),
        ] {
            b.goto(path);
            if page == "service" {
                b.wait("the log stream", Duration::from_secs(15), |b| {
                    b.texts("#log-state") == ["Following live."]
                });
            }
            b.screenshot(&d.join(format!("{page}-{kind}.png")));
        }
    }
    b.viewport(1280, 800);
}

// --------------------------------------------------------------- tests

#[test]
fn dashboard_in_a_real_browser() {
    let ex = Examples::start();
    let _cleanup = KillInstances(ex.server.data_dir.clone());
    let pager = ServiceDir::new(
        "pager",
        1,
        &[],
        "\n[[alerts]]\nname = \"always-on\"\nexpr = 'tend_instance_running > 0'\nfor = \"1s\"\nseverity = \"page\"\nsummary = \"pager is running (a test alert)\"\n",
    );
    // Deploy the examples in parallel; ledger twice, to have a release to roll back to.
    std::thread::scope(|s| {
        s.spawn(|| ex.deploy("checkout"));
        s.spawn(|| ex.deploy("catalog"));
        s.spawn(|| {
            ex.deploy("ledger");
            ex.deploy("ledger");
        });
        // A service of payments whose alert fires as soon as it runs: an incident.
        s.spawn(|| {
            ok(&ex
                .server
                .cli(&ex.admin, &["deploy", pager.path().to_str().unwrap()]));
        });
    });
    let b = Browser::start(&ex.server.url);
    let shots = screenshots_dir();

    // Not signed in: the login form, with a labelled token field.
    b.goto("/ui/services/checkout");
    b.wait(
        "a redirect to the login form",
        Duration::from_secs(10),
        |b| b.count("#token") == 1,
    );
    assert_eq!(b.texts("label[for=token]"), ["Token"]);
    if let Some(d) = &shots {
        for (w, h, kind) in [(1280, 800, "desktop"), (390, 844, "phone")] {
            b.viewport(w, h);
            b.goto("/ui");
            b.screenshot(&d.join(format!("login-{kind}.png")));
        }
        b.viewport(1280, 800);
    }
    // A wrong token is refused with a message, and no session.
    b.goto("/ui");
    b.type_into("#token", "tend_not-a-real-token");
    b.click("form[action='/ui/login'] button[type=submit]");
    b.wait("the refusal", Duration::from_secs(10), |b| {
        b.texts("#login-problem") == ["That token is not valid."]
    });

    // Alice (payments) logs in and sees the catalog with every example and its owner.
    b.log_in(&ex.alice);
    let owners = |b: &Browser| -> Vec<(String, String)> {
        let v = b.js(
            "return [...document.querySelectorAll('#catalog-rows tr[data-service]')].map(r => [r.dataset.service, r.querySelector('td.owner').textContent.trim()])",
            vec![],
        );
        serde_json::from_value(v).unwrap()
    };
    assert_eq!(
        owners(&b),
        [
            ("catalog".to_string(), "storefront".to_string()),
            ("checkout".into(), "payments".into()),
            ("ledger".into(), "payments".into()),
            ("pager".into(), "payments".into()),
        ]
    );
    // Filter by team (the form, as a user would), then search.
    b.rt.block_on(async {
        let sel = b.c().find(Locator::Css("#team")).await.unwrap();
        sel.select_by_value("storefront").await.unwrap();
    });
    b.click("form.filters button[type=submit]");
    b.wait("the storefront filter", Duration::from_secs(10), |b| {
        owners(b) == [("catalog".to_string(), "storefront".to_string())]
    });
    b.goto("/ui?q=ledger");
    assert_eq!(owners(&b).len(), 1);
    assert_eq!(owners(&b)[0].0, "ledger");

    // Traffic, so the charts and sparklines have something to draw.
    ex.traffic("checkout.localhost", "/", 20);
    b.goto("/ui/services/checkout?window=15m");
    // Instances: both of checkout's, ready.
    b.wait("two ready instances", Duration::from_secs(30), |b| {
        b.texts("#instances tr[data-instance] .badge") == ["ready", "ready"]
    });
    // The request chart draws a line once two scrapes saw the traffic.
    b.wait("a drawn request chart", Duration::from_secs(30), |b| {
        ex.traffic("checkout.localhost", "/", 2);
        b.goto("/ui/services/checkout?window=15m");
        // The first chart is the request rate's (CPU and memory draw sooner).
        b.count("figure.chart:first-of-type svg path.s0") >= 1
    });
    assert_eq!(
        b.count("figure.chart"),
        5,
        "requests, errors, latency, CPU, memory"
    );
    let caption = b.js(
        "return document.querySelector('figure.chart svg').getAttribute('aria-label')",
        vec![],
    );
    assert!(
        caption
            .as_str()
            .unwrap()
            .starts_with("Requests by status, latest: 2xx"),
        "{caption}"
    );

    // Live logs: a line the service prints while the page is open appears in it.
    b.wait("the log stream", Duration::from_secs(15), |b| {
        b.texts("#log-state") == ["Following live."]
    });
    let marker = format!("dash-{}", std::process::id());
    ex.traffic("checkout.localhost", &format!("/{marker}"), 1);
    b.wait("the live log line", Duration::from_secs(10), |b| {
        b.texts("#log-lines li").iter().any(|l| l.contains(&marker))
    });
    // Grep narrows the stream to matching lines.
    b.type_into("#log-grep", "second-marker");
    b.click("#log-filters button[type=submit]");
    b.wait("the filtered stream", Duration::from_secs(15), |b| {
        b.texts("#log-state") == ["Following live."]
    });
    ex.traffic("checkout.localhost", &format!("/{marker}"), 1);
    ex.traffic("checkout.localhost", "/second-marker", 1);
    b.wait("the grepped line", Duration::from_secs(10), |b| {
        b.texts("#log-lines li")
            .iter()
            .any(|l| l.contains("/second-marker"))
    });
    assert!(
        b.texts("#log-lines li")
            .iter()
            .all(|l| l.contains("second-marker")),
        "{:?}",
        b.texts("#log-lines li")
    );

    // Alice is in payments: she may roll ledger back; the button rolls back.
    b.goto("/ui/services/ledger");
    let status = ex.api(&ex.admin, "/services/ledger/status");
    assert_eq!(status["release"], 2);
    assert_eq!(b.texts("button.rollback"), ["Roll back to v1"]);
    // The pager's alert opened an incident.
    b.wait("the pager incident", Duration::from_secs(90), |b| {
        b.goto("/ui/incidents");
        b.texts("article.incident h2")
            .iter()
            .any(|t| t.contains("pager is running"))
    });
    let id: i64 = b
        .js(
            "return [...document.querySelectorAll('article.incident')].find(a => a.querySelector('h2').textContent.includes('pager is running')).id.replace('incident-', '')",
            vec![],
        )
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    if let Some(d) = &shots {
        // Steady traffic with a few errors, so the charts in the pictures
        // have lines to show.
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|sc| {
            sc.spawn(|| {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    i += 1;
                    let path = if i % 10 == 0 {
                        "/status/500"
                    } else {
                        "/work?ms=20"
                    };
                    ex.traffic("checkout.localhost", path, 1);
                    std::thread::sleep(Duration::from_millis(40));
                }
            });
            b.wait("a request chart with a few points", Duration::from_secs(90), |b| {
                b.goto("/ui/services/checkout?window=15m");
                let d = b.js(
                    "const p = document.querySelector('figure.chart:first-of-type path.s0'); return p ? p.getAttribute('d') : ''",
                    vec![],
                );
                d.as_str().unwrap_or_default().matches(" L").count() >= 4
            });
            shoot(&b, d);
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        });
    }
    b.goto("/ui/services/ledger");
    b.click("button.rollback");
    b.wait("the rollback notice", Duration::from_secs(15), |b| {
        b.texts(".notice")
            .first()
            .is_some_and(|t| t.starts_with("Rollback started"))
    });
    let status = ex.api(&ex.admin, "/services/ledger/status");
    assert_eq!(status["release"], 1, "{status:#}");
    assert_eq!(status["deployment"]["kind"], "rollback");
    assert_eq!(status["deployment"]["actor"], "alice");
    ex.assert_audited("service.rollback", "alice", "allowed");

    // Alice (payments) acknowledges the pager's incident.
    b.goto("/ui/incidents");
    assert_eq!(b.texts(&format!("#incident-{id} h2 .badge")), ["triggered"]);
    b.click(&format!("#incident-{id} button.ack"));
    b.wait("the acknowledgement", Duration::from_secs(15), |b| {
        b.texts(&format!("#incident-{id} h2 .badge")) == ["acknowledged"]
    });
    let inc = ex.api(&ex.admin, &format!("/incidents/{id}"));
    assert_eq!(inc["incident"]["state"], "acknowledged", "{inc:#}");
    assert_eq!(inc["incident"]["acked_by"], "alice");

    // Bob (storefront) sees ledger but no rollback button, and a forged POST
    // (with his own valid session and CSRF token) is refused.
    b.log_out();
    b.log_in(&ex.bob);
    b.goto("/ui/services/ledger");
    assert_eq!(b.count("main h1"), 1);
    assert_eq!(b.count("button.rollback"), 0);
    assert_eq!(b.count("form.rollback-form"), 0);
    let forged = b.js(
        "const csrf = document.querySelector('input[name=csrf]').value;
         return fetch('/ui/services/ledger/rollback', {method: 'POST',
             headers: {'content-type': 'application/x-www-form-urlencoded'},
             body: 'csrf=' + encodeURIComponent(csrf) + '&to=2'}).then(r => r.status)",
        vec![],
    );
    assert_eq!(forged, 403);
    let no_csrf = b.js(
        "return fetch('/ui/services/catalog/rollback', {method: 'POST',
             headers: {'content-type': 'application/x-www-form-urlencoded'}, body: 'to=1'})
             .then(r => r.status)",
        vec![],
    );
    assert_eq!(
        no_csrf, 403,
        "a POST without the CSRF token is refused even for the owner"
    );
    assert_eq!(ex.api(&ex.admin, "/services/ledger/status")["release"], 1);
    ex.assert_audited("service.rollback", "bob", "denied");

    // Bob sees payments' incident, without buttons to act on it.
    b.goto("/ui/incidents");
    assert_eq!(b.count(&format!("#incident-{id}")), 1);
    assert_eq!(b.count("button.ack") + b.count("button.resolve"), 0);
    let forged = b.js(
        "const csrf = document.querySelector('input[name=csrf]').value;
         return fetch(arguments[0], {method: 'POST',
             headers: {'content-type': 'application/x-www-form-urlencoded'},
             body: 'csrf=' + encodeURIComponent(csrf)}).then(r => r.status)",
        vec![json!(format!("/ui/incidents/{id}/resolve"))],
    );
    assert_eq!(forged, 403);

    // Teams: each with members and services.
    b.goto("/ui/teams");
    assert_eq!(b.texts("#team-payments h2"), ["payments"]);
    assert_eq!(b.texts("#team-storefront .services a"), ["catalog"]);
    assert_eq!(b.texts("#team-payments ul.names li")[0], "alice");

    // A phone-wide screen: nothing is cut off.
    b.viewport(390, 844);
    for page in ["/ui", "/ui/services/checkout", "/ui/incidents", "/ui/teams"] {
        b.goto(page);
        b.assert_no_horizontal_scroll(page);
    }
    assert_eq!(b.path(), "/ui/teams");
}

/// Logs in over plain HTTP; returns the session cookie and the page's CSRF token.
fn http_login(
    server: &TestServer,
    http: &reqwest::blocking::Client,
    token: &str,
) -> (String, String) {
    let page = http.get(format!("{}/ui/login", server.url)).send().unwrap();
    let login_cookie = cookie_value(&page, "tend_login").expect("login cookie");
    let html = page.text().unwrap();
    let csrf = hidden_csrf(&html);
    let resp = http
        .post(format!("{}/ui/login", server.url))
        .header("cookie", format!("tend_login={login_cookie}"))
        .form(&[("token", token), ("csrf", &csrf)])
        .send()
        .unwrap();
    assert_eq!(resp.status(), 303, "{}", resp.text().unwrap_or_default());
    let set = set_cookies(&resp);
    let session = set
        .iter()
        .find(|c| c.starts_with("tend_session="))
        .expect("session cookie")
        .clone();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age=43200"] {
        assert!(session.contains(attr), "{session} lacks {attr}");
    }
    assert!(!session.contains("Secure"), "plain HTTP: no Secure");
    let id = session
        .trim_start_matches("tend_session=")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let home = http
        .get(format!("{}/ui", server.url))
        .header("cookie", format!("tend_session={id}"))
        .send()
        .unwrap();
    assert_eq!(home.status(), 200);
    let csrf = hidden_csrf(&home.text().unwrap());
    (id, csrf)
}

fn set_cookies(r: &reqwest::blocking::Response) -> Vec<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

fn cookie_value(r: &reqwest::blocking::Response, name: &str) -> Option<String> {
    set_cookies(r).iter().find_map(|c| {
        c.strip_prefix(&format!("{name}="))
            .map(|rest| rest.split(';').next().unwrap().to_string())
    })
}

fn hidden_csrf(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a csrf field");
    let rest = &html[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

#[test]
fn sessions_csrf_and_revocation_over_http() {
    let ex = Examples::start();
    let s = &ex.server;
    let http = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    let r = http.get(format!("{}/ui/", s.url)).send().unwrap();
    assert_eq!(r.headers()["location"], "/ui");
    // Pages need a session: they send the browser to the login form.
    let r = http.get(format!("{}/ui/teams", s.url)).send().unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/ui/login");
    let r = http.get(format!("{}/ui/login", s.url)).send().unwrap();
    assert_eq!(r.status(), 200);
    for h in [
        "content-security-policy",
        "x-frame-options",
        "server-timing",
    ] {
        assert!(r.headers().contains_key(h), "missing {h}");
    }

    // Login without the form's CSRF token (a cross-site form) is refused.
    let r = http
        .post(format!("{}/ui/login", s.url))
        .form(&[("token", ex.alice.as_str()), ("csrf", "guess")])
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(cookie_value(&r, "tend_session").is_none());

    // A good login, with the cookie attributes of a session.
    let (id, csrf) = http_login(s, &http, &ex.alice);
    let cookie = format!("tend_session={id}");
    let get = |path: &str, cookie: &str| {
        http.get(format!("{}{path}", s.url))
            .header("cookie", cookie)
            .send()
            .unwrap()
    };
    assert_eq!(get("/ui/teams", &cookie).status(), 200);
    // Behind a TLS proxy, the cookie is Secure.
    let page = http
        .get(format!("{}/ui/login", s.url))
        .header("x-forwarded-proto", "https")
        .send()
        .unwrap();
    assert!(set_cookies(&page)[0].contains("; Secure"));

    // Logout needs the CSRF token; with it, the session ends.
    let post = |path: &str, cookie: &str, form: &[(&str, &str)]| {
        http.post(format!("{}{path}", s.url))
            .header("cookie", cookie)
            .form(form)
            .send()
            .unwrap()
    };
    assert_eq!(post("/ui/logout", &cookie, &[]).status(), 403);
    assert_eq!(
        post("/ui/logout", &cookie, &[("csrf", "wrong")]).status(),
        403
    );
    assert_eq!(
        post("/ui/logout", &cookie, &[("csrf", &csrf)]).status(),
        303
    );
    assert_eq!(get("/ui/teams", &cookie).status(), 303);
    // A change posted after logout is refused, and recorded.
    let r = post(
        "/ui/services/checkout/rollback",
        &cookie,
        &[("csrf", &csrf), ("to", "1")],
    );
    assert_eq!(r.headers()["location"], "/ui/login");

    // Revoking the token ends its sessions at once.
    let (id, _) = http_login(s, &http, &ex.bob);
    let cookie = format!("tend_session={id}");
    assert_eq!(get("/ui/teams", &cookie).status(), 200);
    ok(&s.cli(&ex.admin, &["tokens", "revoke", "bob"]));
    assert_eq!(get("/ui/teams", &cookie).status(), 303);

    // Logins, good and bad, are in the audit trail.
    let r = http.get(format!("{}/ui/login", s.url)).send().unwrap();
    let lc = cookie_value(&r, "tend_login").unwrap();
    let csrf = hidden_csrf(&r.text().unwrap());
    let r = http
        .post(format!("{}/ui/login", s.url))
        .header("cookie", format!("tend_login={lc}"))
        .form(&[("token", "tend_wrong"), ("csrf", csrf.as_str())])
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let audit = ex.api(&ex.admin, "/audit?limit=50");
    let logins: Vec<(Value, Value)> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "ui.login")
        .map(|e| (e["actor"].clone(), e["outcome"].clone()))
        .collect();
    assert!(
        logins.contains(&(json!("alice"), json!("allowed"))),
        "{logins:?}"
    );
    assert!(
        logins.contains(&(Value::Null, json!("denied"))),
        "{logins:?}"
    );
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "POST /ui/services/checkout/rollback"
                && e["outcome"] == "denied"),
        "{audit:#}"
    );

    // Unknown pages and services are a 404 page, not a crash.
    let (id, _) = http_login(s, &http, &ex.alice);
    let cookie = format!("tend_session={id}");
    assert_eq!(get("/ui/services/nope", &cookie).status(), 404);
    assert_eq!(get("/ui/services/NOT_A_NAME", &cookie).status(), 404);
    assert_eq!(get("/ui/services/nope?window=9y", &cookie).status(), 400);
    assert_eq!(get("/ui/nowhere", &cookie).status(), 404);
}

/// Every page under 100 ms of server time with 50 services, some of them
/// running and serving traffic. Server time is what the server reports in
/// `Server-Timing` (its handler's wall time).
#[test]
fn pages_are_fast_with_fifty_services() {
    let ex = Examples::start();
    let _cleanup = KillInstances(ex.server.data_dir.clone());
    let s = &ex.server;
    // 47 registered services plus the 3 running examples.
    for i in 0..47 {
        let team = if i % 2 == 0 { "payments" } else { "storefront" };
        let dir = ex.stage.path().join(format!("svc-{i:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("tend.toml"),
            format!(
                "[service]\nname = \"svc-{i:02}\"\nowner = \"{team}\"\ndescription = \"Service number {i}\"\n\n[run]\ncommand = \"./app\"\n"
            ),
        )
        .unwrap();
        ok(&s.cli(&ex.admin, &["apply", dir.to_str().unwrap()]));
    }
    std::thread::scope(|sc| {
        for name in ["checkout", "catalog", "ledger"] {
            let ex = &ex;
            sc.spawn(move || ex.deploy(name));
        }
    });
    ex.traffic("checkout.localhost", "/", 50);
    ex.traffic("checkout.localhost", "/status/503", 5);
    let http = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let (id, _) = http_login(s, &http, &ex.alice);
    let cookie = format!("tend_session={id}");
    // A few scrapes in, so the metric queries have data to chew on.
    wait_until(
        Duration::from_secs(30),
        "checkout's traffic in the catalog",
        || {
            let rows = http
                .get(format!("{}/ui/fragments/catalog?q=checkout", s.url))
                .header("cookie", &cookie)
                .send()
                .and_then(|r| r.text())
                .unwrap_or_default();
            rows.contains("req/s")
        },
    );
    let pages = [
        "/ui",
        "/ui/fragments/catalog",
        "/ui/services/checkout",
        "/ui/services/checkout?window=7d",
        "/ui/services/svc-07",
        "/ui/services/checkout/instances",
        "/ui/teams",
        "/ui/incidents",
    ];
    let mut report = Vec::new();
    for page in pages {
        let mut times = Vec::new();
        for _ in 0..15 {
            let r = http
                .get(format!("{}{page}", s.url))
                .header("cookie", &cookie)
                .send()
                .unwrap();
            assert_eq!(r.status(), 200, "{page}");
            let timing = r.headers()["server-timing"].to_str().unwrap().to_string();
            let ms: f64 = timing
                .split("dur=")
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("bad Server-Timing {timing}"));
            let body = r.text().unwrap();
            assert!(!body.is_empty());
            times.push(ms);
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let worst = times[times.len() - 1];
        report.push(format!("{page}: median {median:.1} ms, max {worst:.1} ms"));
        // The median is the figure; the worst of 15 on a busy 2-core CI box
        // is reported, not judged.
        assert!(
            median < 100.0,
            "{page}: median {median:.1} ms\n{}",
            report.join("\n")
        );
    }
    eprintln!(
        "dashboard server time with 50 services:\n{}",
        report.join("\n")
    );
    let catalog = http
        .get(format!("{}/ui", s.url))
        .header("cookie", &cookie)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(catalog.matches("<tr data-service=").count(), 50);
}
