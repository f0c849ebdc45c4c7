#!/usr/bin/env python3
"""HTTP figures of `paglets host` (docs/src/performance.md).

Usage, from the repository root, after
`cargo build --release --workspace && cargo build --release -p paglets --example bare_axum`:

    python3 host/benches/http_figures.py              # every section; needs `wrk` on PATH
    python3 host/benches/http_figures.py floor busy   # only these sections

Sections (in this order):

- `host`: cold start, idle RSS, the /health ceiling, messages to counters with 1 and 4
  connections, creates, RSS with 10,000 counters, reloading a library with 1,000 instances;
- `floor`: messages to one counter against a bare axum endpoint doing the same JSON work
  (`host/examples/bare_axum.rs`), with 1 and 4 connections, in interleaved rounds (each round
  starts both servers afresh and measures the floor first); the median of the rounds' ratios;
- `busy`: 8 `pi::Pi` paglets, warmed up with fast messages, each computing 100,000 digits
  while a client asks for `/health` and `GET /paglets/{id}` in turn (a new connection each):
  their latencies, p50, p99 and max.

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
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RELEASE = os.path.join(ROOT, "target", "release")
BIN = os.path.join(RELEASE, "paglets")
BARE = os.path.join(RELEASE, "examples", "bare_axum")
EXAMPLES = ["libcounter.so", "libhello.so", "libserver_info.so", "libpi.so"]
SECTIONS = ["host", "floor", "busy"]
FLOOR_ROUNDS = 5


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
    headers = {"Content-Type": "application/json"} if method == "POST" else {}
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
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
    sections = sys.argv[1:] or SECTIONS
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        sys.exit(f"unknown section(s) {unknown}: choose from {SECTIONS}")
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release --workspace")
    if "floor" in sections and not os.path.exists(BARE):
        sys.exit("build first: cargo build --release -p paglets --example bare_axum")
    work = tempfile.mkdtemp(prefix="paglets-bench-")
    plugins = os.path.join(work, "plugins")
    os.mkdir(plugins)
    for name in EXAMPLES:
        shutil.copy(os.path.join(RELEASE, name), plugins)
    try:
        if "host" in sections:
            host_figures(work, plugins)
        if "floor" in sections:
            floor_figures(work, plugins)
        if "busy" in sections:
            busy_figures(work, plugins)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def host_figures(work, plugins):
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
    # The same load spread over four counters (each request picks the next one). A new
    # connection: the host closed the idle one after its header timeout.
    conn = http.client.HTTPConnection(host, port)
    for n in range(4):
        call(conn, "POST", "/paglets", {"class": "counter::Counter", "id": f"spread{n}"})
    spread = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    spread.write('wrk.method = "POST"\nwrk.body = %s\n'
                 'wrk.headers["Content-Type"] = "application/json"\nn = 0\n'
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


def start_bare():
    proc = subprocess.Popen([BARE, "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    url = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
    return proc, url


def floor_figures(work, plugins):
    """Messages to one counter, the host against bare axum, side by side in each round."""
    body = {"kind": "increment"}
    path = "/paglets/bench/messages"
    rates = {}
    for n in range(FLOOR_ROUNDS):
        for connections in (1, 4):
            proc, url = start_bare()
            wrk(url, path, body, connections, seconds=1)
            bare, _, bare_errors = wrk(url, path, body, connections, seconds=5)
            stop(proc)
            proc, url, host, port = start(plugins, os.path.join(work, f"floor{n}-{connections}"))
            conn = http.client.HTTPConnection(host, port)
            status, _ = call(conn, "POST", "/paglets", {"class": "counter::Counter", "id": "bench"})
            assert status == 201, status
            wrk(url, path, body, connections, seconds=1)
            ours, _, errors = wrk(url, path, body, connections, seconds=5)
            errors = bare_errors + errors
            stop(proc)
            rates.setdefault(connections, []).append((bare, ours))
            print(f"round {n + 1}, {connections} connection(s): bare axum {bare:,.0f}/s, "
                  f"host {ours:,.0f}/s, ratio {ours / bare:.2f} {' '.join(errors)}")
    for connections, pairs in rates.items():
        ratios = [ours / bare for bare, ours in pairs]
        print(f"messages to one counter, {connections} connection(s): host median "
              f"{statistics.median(o for _, o in pairs):,.0f}/s, bare axum median "
              f"{statistics.median(b for b, _ in pairs):,.0f}/s; median ratio "
              f"{statistics.median(ratios):.2f} (rounds: {', '.join(f'{r:.2f}' for r in ratios)})")


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def busy_figures(work, plugins):
    """/health and GET /paglets/{id} while 8 warmed-up pi paglets each compute 100,000 digits."""
    proc, url, host, port = start(plugins, os.path.join(work, "busy"), ["--handler-timeout", "0"])
    conn = http.client.HTTPConnection(host, port)
    ids = [f"pi{n}" for n in range(8)]
    for id in ids:
        call(conn, "POST", "/paglets", {"class": "pi::Pi", "id": id})
        for _ in range(16):
            status, _ = call(conn, "POST", f"/paglets/{id}/messages", {"kind": "digits", "args": {"n": 10}})
            assert status == 200, status
    done = []

    def compute(id):
        c = http.client.HTTPConnection(host, port, timeout=600)
        status, reply = call(c, "POST", f"/paglets/{id}/messages",
                             {"kind": "digits", "args": {"n": 100000}})
        assert status == 200 and reply["reply"]["n"] == 100000, (status, reply)
        done.append(time.perf_counter())

    t0 = time.perf_counter()
    jobs = [threading.Thread(target=compute, args=(id,)) for id in ids]
    for job in jobs:
        job.start()
    health, detail, busy_seen, n = [], [], set(), 0
    while any(job.is_alive() for job in jobs):
        for path, into in (("/health", health), (f"/paglets/{ids[n % len(ids)]}", detail)):
            c = http.client.HTTPConnection(host, port, timeout=5)
            started = time.perf_counter()
            status, reply = call(c, "GET", path)
            into.append((time.perf_counter() - started) * 1000)
            c.close()
            assert status == 200, (path, status, reply)
            if path != "/health" and reply.get("busy"):
                busy_seen.add(path)
        n += 1
    for job in jobs:
        job.join()
    stop(proc)
    print(f"8 pi paglets computing 100,000 digits each: {min(done) - t0:.1f} s to the first "
          f"answer, {max(done) - t0:.1f} s to the last; {len(busy_seen)} of 8 seen busy")
    for name, values in (("GET /health", health), ("GET /paglets/{id}", detail)):
        print(f"{name} meanwhile ({len(values)} requests, a new connection each): "
              f"p50 {percentile(values, 0.5):.2f} ms, p99 {percentile(values, 0.99):.2f} ms, "
              f"max {max(values):.2f} ms")


if __name__ == "__main__":
    main()
