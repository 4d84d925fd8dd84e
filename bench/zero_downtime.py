#!/usr/bin/env python3
"""Zero-downtime check at scale: wrk drives keep-alive traffic through tend's
router at full speed while the service is deployed 10 times in a row, scaled
up and down, restarted and rolled back. Reports requests, non-2xx responses and
socket errors (all must be zero but the request count).

Needs: cargo build --release -p tend; wrk (Debian package).
Usage: python3 bench/zero_downtime.py [--deploys 10] [--connections 32]
"""
import argparse, json, os, re, shutil, signal, socket, subprocess, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEND = os.path.join(ROOT, "target", "release", "tend")
APP = os.path.join(ROOT, "target", "release", "tend-sample-app")


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--deploys", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="tend-zdt-")
    data = os.path.join(tmp, "data")
    api, router = free_port(), free_port()
    server = subprocess.Popen([TEND, "server", "--data-dir", data, "--listen", f"127.0.0.1:{api}",
                               "--router-listen", f"127.0.0.1:{router}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = dict(os.environ, TEND_URL=f"http://127.0.0.1:{api}", NO_COLOR="1")
    load = None
    try:
        end = time.monotonic() + 30
        while not os.path.exists(os.path.join(data, "admin.token")) and time.monotonic() < end:
            time.sleep(0.05)
        time.sleep(0.3)
        env["TEND_TOKEN"] = open(os.path.join(data, "admin.token")).read().strip()
        run = lambda *a: subprocess.run([TEND, *a], env=env, check=True, capture_output=True, text=True)
        run("teams", "create", "bench")
        svc = os.path.join(tmp, "svc")
        os.makedirs(svc)
        shutil.copy(APP, os.path.join(svc, "app"))

        def write(v):
            open(os.path.join(svc, "tend.toml"), "w").write(f"""[service]
name = "zdt"
owner = "bench"
[run]
command = "./app > /dev/null"
instances = 2
grace_period = "5s"
[health]
http = "/healthz"
interval = "500ms"
[deploy]
verify = "1s"
[env]
V = "{v}"
""")
        write(0)
        run("deploy", svc)
        load = subprocess.Popen(["wrk", "-t2", f"-c{args.connections}", "-d600s", "-H", "Host: zdt.localhost",
                                 f"http://127.0.0.1:{router}/"], stdout=subprocess.PIPE, text=True)
        time.sleep(1)
        steps = []
        t0 = time.monotonic()
        for v in range(1, args.deploys + 1):
            write(v); run("deploy", svc); steps.append(f"deploy v{v + 1}")
        run("scale", "zdt", "4"); time.sleep(2); steps.append("scale 4")
        run("scale", "zdt", "1"); time.sleep(2); steps.append("scale 1")
        run("scale", "zdt", "2"); time.sleep(2); steps.append("scale 2")
        run("restart", "zdt"); steps.append("restart")
        run("rollback", "zdt"); steps.append("rollback")
        elapsed = time.monotonic() - t0
        load.send_signal(signal.SIGINT)
        out = load.communicate(timeout=30)[0]
        reqs = int(re.search(r"(\d+) requests in", out).group(1))
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        print(json.dumps({
            "changes": steps, "seconds": round(elapsed, 1), "requests": reqs,
            "requests_per_s": round(reqs / max(elapsed, 1e-9)),
            "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": dict(zip(["connect", "read", "write", "timeout"], map(int, sock.groups()))) if sock else {},
        }, indent=2))
    finally:
        if load and load.poll() is None:
            load.kill()
        try:
            subprocess.run([TEND, "stop", "zdt"], env=env, capture_output=True, timeout=30); time.sleep(1)
        except Exception:
            pass
        server.send_signal(signal.SIGTERM); server.wait()
        subprocess.run(["sh", "-c", f"for p in $(grep -l 'TEND_RUNTIME_ROOT={data}' /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3); do kill -9 $p; done"], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
