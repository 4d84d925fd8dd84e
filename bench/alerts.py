#!/usr/bin/env python3
"""Time to notification with the default alerts (issue #7).

A server with its default settings (scrape every 10 s, rules every 5 s) runs
N services of the sample app owned by one team whose only channel is a
webhook served by this script. Each service gets steady traffic through the
router (GET /, 20 requests/s). For run i, the traffic of service i switches
to GET /status/500 at T0 (the first failing request); the script records when
the Alertmanager-format webhook for that service arrives. No rule is written:
`high-error-rate` is a default alert (5xx ratio > 5 % over 1 m with at least
1 request/s). Reported: median, min and max of the N runs.

Each run starts after a random pause (up to 10 s, or up to 60 s with
--with-prometheus), so the first failing request falls at a random point of
both pipelines' scrape and evaluation cycles, as real failures do; without it
a run would start at the same point of Prometheus' cycle as the previous one
ended (right after an evaluation), which favours neither side fairly.

Before the runs, one single failing request is sent to a healthy service and
the script checks that nothing is notified within 45 s (no page on one error).

With --with-prometheus, the same runs also measure the Prometheus +
Alertmanager pipeline with its default settings, side by side on the same
failures: a real Prometheus (/usr/bin/prometheus) scrapes the same counters
from tend's /metrics every 1 m and evaluates the same rule expression as
tend's default `high-error-rate` every 1 m; a real Alertmanager
(/usr/bin/prometheus-alertmanager, group_wait 30 s, group_interval 5 m)
posts to a second webhook served by this script. Each run then lasts until
both have notified (minutes), so use few runs.

Usage: cargo build --release -p tend && python3 bench/alerts.py [--runs 10] [--with-prometheus] [--seed N]
       (uses target/release, else target/debug)
"""
import argparse, json, os, random, shutil, socket, statistics, subprocess, sys, tempfile, threading, time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def binaries():
    for kind in ("release", "debug"):
        tend = os.path.join(ROOT, "target", kind, "tend")
        app = os.path.join(ROOT, "target", kind, "tend-sample-app")
        if os.path.exists(tend) and os.path.exists(app):
            return kind, tend, app
    raise SystemExit("build first: cargo build --release -p tend")


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def wait(cond, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


class Hooks:
    """Webhook receiver: (arrival time, body) of every POST."""

    def __init__(self):
        self.got = []
        self.lock = threading.Lock()
        hooks = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(n) or b"null")
                with hooks.lock:
                    hooks.got.append((time.monotonic(), body))
                self.send_response(200); self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def firing_for(self, service):
        with self.lock:
            for t, b in self.got:
                if b and b.get("status") == "firing" and b.get("commonLabels", {}).get("service") == service:
                    return t
        return None


class Load:
    """20 requests/s to a service through the router; `path` can be switched."""

    def __init__(self, router, service):
        self.url, self.host, self.path, self.stop = router, f"{service}.localhost", "/", False
        self.first_at = {}
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        while not self.stop:
            path = self.path
            if path not in self.first_at:
                self.first_at[path] = time.monotonic()
            req = urllib.request.Request(self.url + path, headers={"Host": self.host})
            try:
                urllib.request.urlopen(req, timeout=5).read()
            except Exception:
                pass
            time.sleep(0.05)


# tend's default `high-error-rate` (crates/tend-alerts/src/rules.rs) for every
# service at once: per-series increase over the last minute, counting a series
# that appeared within the minute from zero.
def _increase(sel):
    return f"clamp_min({sel} - ({sel} offset 1m or {sel} * 0), 0)"


_TOTAL = f"sum by (service, team) ({_increase('tend_http_requests_total')})"
_ERRORS = "sum by (service, team) (" + _increase('tend_http_requests_total{code="5xx"}') + ")"
PROM_RULE = f"({_ERRORS} / {_TOTAL}) > 0.05 and {_TOTAL} >= 60"


class PromPipeline:
    """Prometheus + Alertmanager with their default intervals, as processes."""

    def __init__(self, tmp, api_port, token, webhook):
        self.procs = []
        d = os.path.join(tmp, "prom")
        os.makedirs(d)
        am_port, prom_port = free_port(), free_port()
        with open(os.path.join(d, "token"), "w") as f:
            f.write(token)
        with open(os.path.join(d, "rules.yml"), "w") as f:
            f.write("groups:\n  - name: tend-defaults\n    rules:\n"
                    "      - alert: high-error-rate\n"
                    f"        expr: '{PROM_RULE}'\n"
                    "        labels:\n          severity: page\n")
        with open(os.path.join(d, "prometheus.yml"), "w") as f:
            # The defaults, written out: scrape and evaluate every minute.
            f.write("global:\n  scrape_interval: 1m\n  evaluation_interval: 1m\n"
                    "rule_files: [rules.yml]\n"
                    f"alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{am_port}']\n"
                    "scrape_configs:\n  - job_name: tend\n    metrics_path: /metrics\n"
                    f"    authorization:\n      credentials_file: {os.path.join(d, 'token')}\n"
                    f"    static_configs:\n      - targets: ['127.0.0.1:{api_port}']\n")
        with open(os.path.join(d, "alertmanager.yml"), "w") as f:
            # Alertmanager's documented defaults, written out.
            f.write("route:\n  receiver: bench\n  group_by: [alertname, service]\n"
                    "  group_wait: 30s\n  group_interval: 5m\n  repeat_interval: 4h\n"
                    f"receivers:\n  - name: bench\n    webhook_configs:\n      - url: {webhook}\n")
        self.procs.append(subprocess.Popen(
            ["/usr/bin/prometheus-alertmanager", f"--config.file={d}/alertmanager.yml",
             f"--storage.path={d}/am", f"--web.listen-address=127.0.0.1:{am_port}",
             "--cluster.listen-address="], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        self.procs.append(subprocess.Popen(
            ["/usr/bin/prometheus", f"--config.file={d}/prometheus.yml",
             f"--storage.tsdb.path={d}/tsdb", f"--web.listen-address=127.0.0.1:{prom_port}"],
            cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in (am_port, prom_port):
            wait(lambda: _ready(f"http://127.0.0.1:{port}/-/ready"), 60, f"ready on {port}")

    def stop(self):
        for p in self.procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def _ready(url):
    try:
        return urllib.request.urlopen(url, timeout=2).status == 200
    except Exception:
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--with-prometheus", action="store_true",
                    help="also measure Prometheus + Alertmanager with default settings (minutes per run)")
    ap.add_argument("--seed", type=int, default=None, help="seed of the random pauses between runs")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    rng = random.Random(seed)
    print(f"seed {seed}", flush=True)
    kind, tend, app = binaries()
    tmp = tempfile.mkdtemp(prefix="tend-bench-alerts-")
    data = os.path.join(tmp, "data")
    api, router_port = free_port(), free_port()
    server = subprocess.Popen([tend, "server", "--data-dir", data, "--listen", f"127.0.0.1:{api}",
                               "--router-listen", f"127.0.0.1:{router_port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = dict(os.environ, TEND_URL=f"http://127.0.0.1:{api}", NO_COLOR="1")
    loads = []
    prom = None
    try:
        wait(lambda: os.path.exists(os.path.join(data, "admin.token")), 60, "server")
        time.sleep(0.3)
        env["TEND_TOKEN"] = open(os.path.join(data, "admin.token")).read().strip()
        run = lambda *a: subprocess.run([tend, *a], env=env, check=True, capture_output=True, text=True)
        hooks = Hooks()
        run("teams", "create", "bench")
        run("teams", "channels", "add", "bench", "--webhook", hooks.url)
        if args.with_prometheus:
            am_hooks = Hooks()
            prom = PromPipeline(tmp, api, env["TEND_TOKEN"], am_hooks.url)
        names = [f"svc{i}" for i in range(args.runs + 1)]
        for name in names:
            d = os.path.join(tmp, name)
            os.makedirs(d)
            shutil.copy(app, os.path.join(d, "app"))
            with open(os.path.join(d, "tend.toml"), "w") as f:
                f.write(f'[service]\nname = "{name}"\nowner = "bench"\n[run]\ncommand = "./app"\n'
                        '[health]\nhttp = "/healthz"\ninterval = "500ms"\n')
            run("deploy", d)
        router = f"http://127.0.0.1:{router_port}"
        for name in names:
            loads.append(Load(router, name))
        # Let every service build a healthy baseline (1 m rate window).
        time.sleep(70)

        # One failed request must not page.
        quiet = loads[-1]
        try:
            urllib.request.urlopen(urllib.request.Request(router + "/status/500", headers={"Host": quiet.host}), timeout=5)
        except Exception:
            pass
        time.sleep(45)
        single = hooks.firing_for(names[-1])
        print(f"single failed request paged: {'YES' if single else 'no'}", flush=True)

        times, prom_times = [], []
        for i in range(args.runs):
            time.sleep(rng.uniform(0, 60 if prom else 10))
            load = loads[i]
            load.path = "/status/500"
            wait(lambda: "/status/500" in load.first_at, 5, "first failing request")
            t0 = load.first_at["/status/500"]
            wait(lambda: hooks.firing_for(names[i]) is not None, 300, f"notification for {names[i]}")
            dt = hooks.firing_for(names[i]) - t0
            times.append(dt)
            print(f"run {i + 1}: {dt:.2f} s", flush=True)
            if prom:
                wait(lambda: am_hooks.firing_for(names[i]) is not None, 600,
                     f"Alertmanager's notification for {names[i]}")
                pdt = am_hooks.firing_for(names[i]) - t0
                prom_times.append(pdt)
                print(f"run {i + 1}: Prometheus + Alertmanager {pdt:.2f} s", flush=True)
            load.path = "/"
        result = {
            "binary": kind, "runs": len(times), "seed": seed,
            "median_s": round(statistics.median(times), 2),
            "min_s": round(min(times), 2), "max_s": round(max(times), 2),
            "single_failed_request_paged": bool(single),
        }
        if prom_times:
            result["prometheus_alertmanager"] = {
                "runs": len(prom_times),
                "median_s": round(statistics.median(prom_times), 2),
                "min_s": round(min(prom_times), 2), "max_s": round(max(prom_times), 2),
            }
            result["ratio"] = round(statistics.median(prom_times) / statistics.median(times), 1)
        print(json.dumps(result))
    finally:
        if prom:
            prom.stop()
        for l in loads:
            l.stop = True
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        # Instances outlive the server by design: stop this run's.
        root = os.path.realpath(os.path.join(data, "instances"))
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                envb = open(f"/proc/{pid}/environ", "rb").read()
            except OSError:
                continue
            if f"TEND_RUNTIME_ROOT={root}".encode() in envb.split(b"\0"):
                try:
                    os.killpg(int(pid), 9)
                except OSError:
                    pass
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
