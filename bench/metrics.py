#!/usr/bin/env python3
"""tend's time-series store against Prometheus on the same samples.

Synthetic scrape targets (32 instances of 4 services, ~330 series each, so
~10.6k series, scraped every 15 s for 6 h: ~14.6 M samples, values from a
fixed-seed generator) are produced by
crates/tend-metrics/examples/metrics_vs_prometheus.rs, which
  * for tend: parses each scrape's exposition text and labels it like the
    collector (one exposition::ScrapeCache per target) and appends it to a
    Tsdb (compacting every hour of data, as the background thread does),
    then compacts and times the queries in-process;
  * for Prometheus: parses the same text the same way and remote-writes each
    round of scrapes (one request per 15 s of data) to a real Prometheus
    started here with --web.enable-remote-write-receiver.
Both stores therefore hold identical samples.

Measured, in one run on this machine:
  * bytes/sample after compaction: bytes of the persisted blocks (chunks,
    index, metadata) / samples in them; chunks alone as well;
  * ingest samples/s per core: samples / CPU seconds of the ingesting process
    (tend: the process's CPU time, WAL thread included, minus the time spent
    rendering the synthetic text; Prometheus: utime+stime of the server while
    receiving, remote-write decoding included: its cheapest bulk ingest path);
  * query_range latency of five dashboard queries over the last hour, 30 s
    step, median of 7: tend in-process; Prometheus's own execTotalTime
    (stats=all), which likewise leaves out HTTP and JSON encoding.
Goals (issue 6): bytes/sample <= Prometheus's, ingest >= 5x Prometheus's per
core, queries no slower.

Needs: prometheus (apt-get install -y prometheus).
Usage: python3 bench/metrics.py
"""
import json, os, shutil, socket, subprocess, sys, tempfile, time, urllib.parse, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER = os.path.join(ROOT, "target", "release", "examples", "metrics_vs_prometheus")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def get(url, params=None):
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=120) as r:
        return r.read().decode()


def prom_metric(base, name):
    for line in get(base + "/metrics").splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def block_stats(blocks):
    """(samples, all bytes, chunk bytes) of Prometheus block directories."""
    samples = total = chunks = 0
    for b in blocks:
        meta = json.load(open(os.path.join(b, "meta.json")))
        samples += meta["stats"]["numSamples"]
        for dirpath, _, files in os.walk(b):
            for f in files:
                size = os.path.getsize(os.path.join(dirpath, f))
                total += size
                if os.path.basename(dirpath) == "chunks":
                    chunks += size
    return samples, total, chunks


def main():
    if not shutil.which("prometheus"):
        raise SystemExit("prometheus not found: apt-get install -y prometheus")
    subprocess.run(["cargo", "build", "--release", "-p", "tend-metrics",
                    "--example", "metrics_vs_prometheus"], cwd=ROOT, check=True)
    # Old enough that all 6 h are in the past, aligned like scrape times.
    t0 = (int(time.time()) - 7 * 3600) // 15 * 15 * 1000
    tmp = tempfile.mkdtemp(prefix="tend-metrics-bench-")
    prom = None
    try:
        print("tend: ingesting ...", file=sys.stderr)
        ours = json.loads(subprocess.run([DRIVER, "tend", os.path.join(tmp, "tend"), str(t0)],
                                         check=True, capture_output=True, text=True).stdout)

        print("prometheus: ingesting by remote write ...", file=sys.stderr)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        cfg = os.path.join(tmp, "prometheus.yml")
        open(cfg, "w").write("global: {}\n")
        prom = subprocess.Popen(["prometheus", f"--config.file={cfg}",
                                 f"--storage.tsdb.path={tmp}/prom",
                                 "--storage.tsdb.retention.time=3650d",
                                 f"--web.listen-address=127.0.0.1:{port}",
                                 "--web.enable-remote-write-receiver", "--log.level=warn"],
                                stdout=subprocess.DEVNULL)
        for _ in range(600):
            try:
                get(base + "/-/ready")
                break
            except Exception:
                time.sleep(0.1)
        cpu0 = cpu_seconds(prom.pid)
        t_wall = time.time()
        sent = json.loads(subprocess.run([DRIVER, "send", base + "/api/v1/write", str(t0)],
                                         check=True, capture_output=True, text=True).stdout)
        wall = time.time() - t_wall
        # Wait for the head compaction the appends triggered to finish: the
        # set of blocks and the head's start unchanged for 10 s.
        blocks_dir = os.path.join(tmp, "prom")
        def blocks():
            return sorted(os.path.join(blocks_dir, d) for d in os.listdir(blocks_dir)
                          if os.path.exists(os.path.join(blocks_dir, d, "meta.json")))
        deadline, last, since = time.time() + 300, None, time.time()
        while time.time() < deadline:
            state = (blocks(), prom_metric(base, "prometheus_tsdb_head_min_time"))
            if state != last:
                last, since = state, time.time()
            elif state[0] and time.time() - since >= 10:
                break
            time.sleep(1)
        # Compaction is part of ingest (tend's figure includes its own); the
        # idle seconds of the wait cost next to nothing.
        prom_cpu = cpu_seconds(prom.pid) - cpu0
        p_samples, p_bytes, p_chunks = block_stats(blocks())

        end = ours["end_ms"] / 1000
        prom_q = []
        for q in ours["queries"]:
            times = []
            for _ in range(7):
                r = json.loads(get(base + "/api/v1/query_range", {
                    "query": q["query"], "start": end - 3600, "end": end, "step": "30s",
                    "stats": "all"}))
                times.append(r["data"]["stats"]["timings"]["execTotalTime"])
                series = len(r["data"]["result"])
            times.sort()
            prom_q.append((times[3], series))

        t_rate = ours["samples"] / ours["ingest_cpu_seconds"]
        p_rate = sent["samples"] / prom_cpu
        t_bps = ours["block_bytes"] / ours["block_samples"]
        p_bps = p_bytes / p_samples
        print(f"series: {ours['series']}, samples: {ours['samples']} (sent to Prometheus: {sent['samples']})")
        print(f"{'':38} {'tend':>12} {'Prometheus':>12} {'ratio':>8}")
        print(f"{'bytes/sample, blocks (all files)':38} {t_bps:12.3f} {p_bps:12.3f} {p_bps / t_bps:7.2f}x")
        print(f"{'bytes/sample, chunks only':38} {ours['block_chunk_bytes'] / ours['block_samples']:12.3f} "
              f"{p_chunks / p_samples:12.3f}")
        print(f"{'samples in blocks':38} {ours['block_samples']:12} {p_samples:12}")
        print(f"{'ingest samples/s per core':38} {t_rate:12.0f} {p_rate:12.0f} {t_rate / p_rate:7.2f}x")
        print(f"{'ingest wall seconds':38} {ours['ingest_wall_seconds']:12.1f} {wall:12.1f}")
        for q, (pt, ps) in zip(ours["queries"], prom_q):
            tt = q["median_seconds"]
            print(f"query_range {tt * 1e3:8.1f} ms vs {pt * 1e3:8.1f} ms ({pt / tt:5.2f}x)  "
                  f"series {q['series']}/{ps}  {q['query']}")
    finally:
        if prom is not None:
            prom.kill()
            prom.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
