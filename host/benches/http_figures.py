#!/usr/bin/env python3
"""HTTP figures of `paglets host` (docs/src/performance.md).

Usage, from the repository root, after `cargo build --release --workspace`:

    python3 host/benches/http_figures.py            # needs `wrk` on PATH (apt-get install -y wrk)

It starts the release host on 127.0.0.1 with the example libraries, prints one line per
figure (medians where several runs are made) and stops every process it started.
"""

import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RELEASE = os.path.join(ROOT, "target", "release")
BIN = os.path.join(RELEASE, "paglets")
EXAMPLES = ["libcounter.so", "libhello.so", "libserver_info.so", "libpi.so"]


def start(plugins, persistence, extra=()):
    proc = subprocess.Popen(
        [BIN, "host", "--name", "bench", "--paths", plugins, "--port", "0",
         "--persistence-dir", persistence, "--no-watch", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "RUST_LOG": "warn", "PAGLETS_API_KEY": ""},
    )
    line = proc.stdout.readline()
    url = line.strip().rsplit(" ", 1)[-1]
    host, port = url.removeprefix("http://").split(":")
    return proc, url, host, int(port)


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


def call(conn, method, path, body=None):
    conn.request(method, path, body=json.dumps(body) if body is not None else None)
    response = conn.getresponse()
    data = response.read()
    return response.status, (json.loads(data) if data else None)


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def wrk(url, path, body, connections, seconds=10):
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write('wrk.method = "POST"\nwrk.body = %s\nwrk.headers["Content-Type"] = "application/json"\n'
                 % json.dumps(json.dumps(body)))
    script.close()
    threads = min(connections, 2)
    out = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--latency",
         "-s", script.name, url + path],
        capture_output=True, text=True, check=True).stdout
    os.unlink(script.name)
    rate = float(next(l for l in out.splitlines() if l.startswith("Requests/sec")).split()[1])
    p50 = next(l for l in out.splitlines() if l.strip().startswith("50%")).split()[1]
    errors = [l for l in out.splitlines() if "Non-2xx" in l or "Socket errors" in l]
    return rate, p50, errors


def main():
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release --workspace")
    work = tempfile.mkdtemp(prefix="paglets-bench-")
    plugins = os.path.join(work, "plugins")
    os.mkdir(plugins)
    for name in EXAMPLES:
        shutil.copy(os.path.join(RELEASE, name), plugins)
    try:
        # Cold start to the first /health 200, examples loaded (10 runs, median).
        starts = []
        for n in range(10):
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                [BIN, "host", "--name", "cold", "--paths", plugins, "--port", str(18765 + n),
                 "--persistence-dir", os.path.join(work, f"cold{n}"), "--no-watch"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env={**os.environ, "RUST_LOG": "warn", "PAGLETS_API_KEY": ""})
            while True:
                try:
                    c = http.client.HTTPConnection("127.0.0.1", 18765 + n, timeout=1)
                    if call(c, "GET", "/health")[0] == 200:
                        break
                except OSError:
                    time.sleep(0.0005)
            starts.append((time.perf_counter() - t0) * 1000)
            stop(proc)
        print(f"cold start to first /health 200: median {statistics.median(starts):.1f} ms "
              f"(min {min(starts):.1f}, max {max(starts):.1f}, 10 runs)")

        proc, url, host, port = start(plugins, os.path.join(work, "p1"))
        time.sleep(1)  # let the process settle before reading its idle RSS
        print(f"idle RSS, examples loaded: {rss_mib(proc.pid):.1f} MiB")
        conn = http.client.HTTPConnection(host, port)
        call(conn, "POST", "/paglets", {"class": "counter::Counter", "id": "bench"})
        # The machine's ceiling for this HTTP stack: GET /health does no paglet work.
        for connections in (1, 4):
            out = subprocess.run(["wrk", "-t", str(min(connections, 2)), "-c", str(connections), "-d", "10s",
                                  url + "/health"], capture_output=True, text=True, check=True).stdout
            rate = float(next(l for l in out.splitlines() if l.startswith("Requests/sec")).split()[1])
            print(f"baseline GET /health, {connections} connection(s): {rate:,.0f}/s")
        body = {"kind": "increment"}
        for connections in (1, 4):
            rate, p50, errors = wrk(url, "/paglets/bench/messages", body, connections)
            print(f"messages to one counter, {connections} connection(s): {rate:,.0f}/s "
                  f"(p50 {p50}) {' '.join(errors)}")
        # The same load spread over four counters (each request picks the next one).
        for n in range(4):
            call(conn, "POST", "/paglets", {"class": "counter::Counter", "id": f"spread{n}"})
        spread = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
        spread.write('wrk.method = "POST"\nwrk.body = %s\nn = 0\n'
                     'request = function()\n  n = n + 1\n'
                     '  return wrk.format(nil, "/paglets/spread" .. (n %% 4) .. "/messages")\nend\n'
                     % json.dumps(json.dumps(body)))
        spread.close()
        out = subprocess.run(["wrk", "-t", "2", "-c", "4", "-d", "10s", "--latency", "-s", spread.name, url],
                             capture_output=True, text=True, check=True).stdout
        os.unlink(spread.name)
        rate = float(next(l for l in out.splitlines() if l.startswith("Requests/sec")).split()[1])
        bad = [l for l in out.splitlines() if "Non-2xx" in l]
        print(f"messages to four counters, 4 connections: {rate:,.0f}/s {' '.join(bad)}")
        rate, p50, errors = wrk(url, "/paglets", {"class": "counter::Counter"}, 1, seconds=5)
        print(f"creating a paglet over HTTP, 1 connection: p50 {p50} ({rate:,.0f}/s) {' '.join(errors)}")
        stop(proc)

        proc, url, host, port = start(plugins, os.path.join(work, "p2"))
        conn = http.client.HTTPConnection(host, port)
        for n in range(10000):
            status, _ = call(conn, "POST", "/paglets", {"class": "counter::Counter", "id": f"c{n}"})
            assert status == 201, status
        time.sleep(1)
        print(f"RSS with 10,000 live counters: {rss_mib(proc.pid):.1f} MiB")
        stop(proc)

        # Reloading a library with 1,000 live instances: the file gets new bytes (same code,
        # a few bytes appended), POST /admin/rescan copies, hashes, loads and migrates.
        only = os.path.join(work, "only-counter")
        os.mkdir(only)
        shutil.copy(os.path.join(RELEASE, "libcounter.so"), only)
        proc, url, host, port = start(only, os.path.join(work, "p3"))
        conn = http.client.HTTPConnection(host, port)
        for n in range(1000):
            call(conn, "POST", "/paglets", {"class": "counter::Counter", "id": f"c{n}"})
        original = open(os.path.join(RELEASE, "libcounter.so"), "rb").read()
        times = []
        for n in range(10):
            tmp = os.path.join(only, ".next")
            with open(tmp, "wb") as f:
                f.write(original + b"\0reload-%d" % n)
            os.rename(tmp, os.path.join(only, "libcounter.so"))
            t0 = time.perf_counter()
            status, reply = call(conn, "POST", "/admin/rescan", {})
            times.append((time.perf_counter() - t0) * 1000)
            assert status == 200 and len(reply["migrated"]) == 1000, reply
        print(f"reloading a library with 1,000 live instances (POST /admin/rescan): median "
              f"{statistics.median(times):.1f} ms (min {min(times):.1f}, max {max(times):.1f}, 10 runs)")
        stop(proc)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
