#!/usr/bin/env python3
"""tend's router against nginx as a reverse proxy, in one run on one machine.

The same backend (nginx returning a small static body, run by tend as a
service instance), the same load generator (wrk, keep-alive), three paths:
  direct   wrk -> backend
  nginx    wrk -> nginx (proxy_pass, upstream keepalive) -> backend
  tend     wrk -> tend router -> backend
Each path runs --duration seconds after a warm-up; the order is rotated per
round and each figure is the median over --rounds rounds.

Needs: cargo build --release -p tend; Debian packages nginx (or nginx-light) and wrk.
Usage: python3 bench/router.py [--duration 10] [--connections 64] [--rounds 3]
"""
import argparse, json, os, re, shutil, signal, socket, statistics, subprocess, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEND = os.path.join(ROOT, "target", "release", "tend")

BACKEND_CONF = """worker_processes 1;
pid nginx.pid;
error_log stderr error;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path tmp; proxy_temp_path tmp; fastcgi_temp_path tmp; uwsgi_temp_path tmp; scgi_temp_path tmp;
  server {
    listen 127.0.0.1:@PORT@;
    keepalive_requests 1000000;
    location / { default_type text/plain; return 200 "hello from the backend\\n"; }
    location = /healthz { return 200 "ok\\n"; }
  }
}
"""

PROXY_CONF = """worker_processes auto;
pid {dir}/proxy.pid;
error_log stderr error;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/tmp; proxy_temp_path {dir}/tmp; fastcgi_temp_path {dir}/tmp; uwsgi_temp_path {dir}/tmp; scgi_temp_path {dir}/tmp;
  upstream backend {{ server 127.0.0.1:{backend}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port};
    keepalive_requests 1000000;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }}
  }}
}}
"""


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def wait(cond, timeout=60.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def up(url, host=None):
    try:
        req = urllib.request.Request(url, headers={"Host": host} if host else {})
        with urllib.request.urlopen(req, timeout=1) as r:
            return r.status == 200
    except Exception:
        return False


def to_ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    n, u = float(m.group(1)), m.group(2)
    return n / 1000 if u == "us" else n * 1000 if u == "s" else n


def wrk(url, host, duration, connections):
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-H", f"Host: {host}", url],
                         check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50_ms": to_ms(lat["50"]), "p99_ms": to_ms(lat["99"]),
            "non_2xx": int(errors.group(1)) if errors else 0, "socket_errors": sock.group(1) if sock else ""}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    for tool in ("nginx", "wrk"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: apt-get install nginx-light wrk")
    if not os.path.exists(TEND):
        raise SystemExit("run `cargo build --release -p tend` first")
    tmp = tempfile.mkdtemp(prefix="tend-router-bench-")
    data = os.path.join(tmp, "data")
    api, router = free_port(), free_port()
    server = subprocess.Popen([TEND, "server", "--data-dir", data, "--listen", f"127.0.0.1:{api}",
                               "--router-listen", f"127.0.0.1:{router}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = dict(os.environ, TEND_URL=f"http://127.0.0.1:{api}", NO_COLOR="1")
    proxy = None
    try:
        wait(lambda: os.path.exists(os.path.join(data, "admin.token")), what="server")
        time.sleep(0.3)
        env["TEND_TOKEN"] = open(os.path.join(data, "admin.token")).read().strip()
        run = lambda *a: subprocess.run([TEND, *a], env=env, check=True, capture_output=True, text=True)
        run("teams", "create", "bench")
        svc = os.path.join(tmp, "svc")
        os.makedirs(os.path.join(svc, "tmp"))
        open(os.path.join(svc, "backend.conf.in"), "w").write(BACKEND_CONF)
        open(os.path.join(svc, "tend.toml"), "w").write("""[service]
name = "bench"
owner = "bench"
[run]
command = 'sed "s/@PORT@/$PORT/" backend.conf.in > backend.conf && exec nginx -p "$PWD" -c backend.conf -g "daemon off;"'
[health]
http = "/healthz"
[deploy]
verify = "0s"
""")
        run("deploy", svc)
        status = json.loads(run("status", "bench", "-o", "json").stdout)
        backend = status["instances"][0]["port"]
        pdir = os.path.join(tmp, "proxy")
        os.makedirs(os.path.join(pdir, "tmp"))
        nginx_port = free_port()
        open(os.path.join(pdir, "proxy.conf"), "w").write(PROXY_CONF.format(dir=pdir, backend=backend, port=nginx_port))
        proxy = subprocess.Popen(["nginx", "-p", pdir, "-c", os.path.join(pdir, "proxy.conf"), "-g", "daemon off;"])
        targets = {
            "direct": f"http://127.0.0.1:{backend}/",
            "nginx": f"http://127.0.0.1:{nginx_port}/",
            "tend": f"http://127.0.0.1:{router}/",
        }
        for name, url in targets.items():
            wait(lambda: up(url, "bench.localhost"), what=f"{name} path")
            wrk(url, "bench.localhost", 2, args.connections)  # warm-up
        results = {k: [] for k in targets}
        order = list(targets)
        for r in range(args.rounds):
            for name in order[r % 3:] + order[:r % 3]:
                results[name].append(wrk(targets[name], "bench.localhost", args.duration, args.connections))
        summary = {}
        for name, runs in results.items():
            summary[name] = {k: round(statistics.median([x[k] for x in runs]), 3) for k in ("rps", "p50_ms", "p99_ms")}
            summary[name]["non_2xx"] = sum(x["non_2xx"] for x in runs)
        summary["ratios"] = {
            "tend_rps_over_nginx": round(summary["tend"]["rps"] / summary["nginx"]["rps"], 3),
            "tend_p99_over_nginx": round(summary["tend"]["p99_ms"] / summary["nginx"]["p99_ms"], 3),
            "tend_p50_over_nginx": round(summary["tend"]["p50_ms"] / summary["nginx"]["p50_ms"], 3),
        }
        summary["settings"] = {"duration_s": args.duration, "connections": args.connections, "rounds": args.rounds,
                               "wrk_threads": 2, "cores": os.cpu_count()}
        print(json.dumps(summary, indent=2))
    finally:
        if proxy:
            proxy.send_signal(signal.SIGQUIT); proxy.wait()
        try:
            subprocess.run([TEND, "stop", "bench"], env=env, capture_output=True, timeout=30)
            time.sleep(1)
        except Exception:
            pass
        server.send_signal(signal.SIGTERM); server.wait()
        subprocess.run(["sh", "-c", f"for p in $(grep -l 'TEND_RUNTIME_ROOT={data}' /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3); do kill -9 $p; done"], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
