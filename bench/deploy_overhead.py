#!/usr/bin/env python3
"""Platform overhead of `tend deploy --release vN` (issue: deployment automation).

Measures, in one run on this machine:
  * T_deploy: wall time of `tend deploy --release vN` switching 2 instances of
    the sample app between two existing releases (no build), median of N runs;
  * T_app: the sample app's own time from exec to its first healthy /healthz,
    measured by starting it directly, median of N runs;
and reports overhead = T_deploy - T_app. Two instances start in parallel
(max_surge covers them), so one app start-up is the service's own share.

Usage: cargo build --release && python3 bench/deploy_overhead.py [--runs 20]
"""
import argparse, json, os, shutil, signal, socket, statistics, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEND = os.path.join(ROOT, "target", "release", "tend")
APP = os.path.join(ROOT, "target", "release", "tend-sample-app")


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def wait(cond, timeout=30.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.002)
    raise SystemExit(f"timed out waiting for {what}")


def healthy(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=0.5) as r:
            return r.status == 200
    except Exception:
        return False


def app_startup(runs):
    times = []
    for _ in range(runs):
        port = free_port()
        t0 = time.monotonic()
        p = subprocess.Popen([APP], env={"PORT": str(port), "PATH": os.environ["PATH"]},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait(lambda: healthy(port), what="sample app healthy")
            times.append(time.monotonic() - t0)
        finally:
            p.kill(); p.wait()
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    for b in (TEND, APP):
        if not os.path.exists(b):
            raise SystemExit(f"missing {b}: run `cargo build --release` first")
    tmp = tempfile.mkdtemp(prefix="tend-bench-")
    data = os.path.join(tmp, "data")
    api = free_port()
    server = subprocess.Popen([TEND, "server", "--data-dir", data, "--listen", f"127.0.0.1:{api}",
                               "--router-listen", f"127.0.0.1:{free_port()}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = dict(os.environ, TEND_URL=f"http://127.0.0.1:{api}", NO_COLOR="1")
    try:
        wait(lambda: os.path.exists(os.path.join(data, "admin.token")), what="server")
        time.sleep(0.2)
        env["TEND_TOKEN"] = open(os.path.join(data, "admin.token")).read().strip()
        run = lambda *a: subprocess.run([TEND, *a], env=env, check=True, capture_output=True, text=True)
        run("teams", "create", "bench")
        svc = os.path.join(tmp, "svc")
        os.makedirs(svc)
        shutil.copy(APP, os.path.join(svc, "app"))
        for v in ("1", "2"):
            with open(os.path.join(svc, "tend.toml"), "w") as f:
                f.write(f"""[service]
name = "bench"
owner = "bench"
[run]
command = "./app"
instances = 2
grace_period = "5s"
[health]
http = "/healthz"
interval = "1s"
[deploy]
verify = "0s"
[env]
V = "{v}"
""")
            run("deploy", svc)
        t_app = app_startup(args.runs)
        t_deploy = []
        for i in range(args.runs):
            v = "v1" if i % 2 == 0 else "v2"
            t0 = time.monotonic()
            run("deploy", svc, "--release", v)
            t_deploy.append(time.monotonic() - t0)
        md, ma = statistics.median(t_deploy), statistics.median(t_app)
        print(json.dumps({
            "runs": args.runs,
            "deploy_release_median_s": round(md, 4),
            "deploy_release_p90_s": round(sorted(t_deploy)[int(0.9 * (len(t_deploy) - 1))], 4),
            "app_ready_median_s": round(ma, 4),
            "platform_overhead_median_s": round(md - ma, 4),
            "goal_s": 0.5,
        }, indent=2))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait()
        # The bench's instances outlive the server by design; stop them.
        subprocess.run(["pkill", "-f", os.path.join(data, "instances")], check=False)
        subprocess.run(["sh", "-c", f"for p in $(grep -l 'TEND_RUNTIME_ROOT={data}' /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3); do kill -9 $p; done"], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
