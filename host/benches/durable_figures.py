#!/usr/bin/env python3
"""Durable-state figures of `paglets host` (docs/src/performance.md, "Durable state").

Usage, from the repository root, after `cargo build --release --workspace`:

    python3 host/benches/durable_figures.py         # needs `wrk` on PATH (apt-get install -y wrk)

Everything is measured in one run on one machine, against references taken in the same run:
`--durability shutdown` for message throughput, and the disk's own commit latency for `sync`.
It prints one line per figure and stops every process it started.
"""

import http.client
import json
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RELEASE = os.path.join(ROOT, "target", "release")
BIN = os.path.join(RELEASE, "paglets")
ROUNDS = 3
SECONDS = 5


def start(plugins, persistence, extra=(), log=None):
    proc = subprocess.Popen(
        [BIN, "host", "--name", "bench", "--paths", plugins, "--port", "0",
         "--persistence-dir", persistence, "--no-watch", *extra],
        stdout=subprocess.PIPE, stderr=log or subprocess.DEVNULL, text=True,
        env={**os.environ, "RUST_LOG": "info" if log else "warn", "PAGLETS_API_KEY": ""},
    )
    url = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port))
    while call(conn, "GET", "/health")[0] != 200:
        time.sleep(0.01)
    return proc, url, conn


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)


def call(conn, method, path, body=None):
    headers = {"Content-Type": "application/json"} if method == "POST" else {}
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    response = conn.getresponse()
    data = response.read()
    return response.status, (json.loads(data) if data else None)


def wrk(url, path, body, connections, seconds=SECONDS, lua_extra=""):
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write('wrk.method = "POST"\nwrk.body = %s\nwrk.headers["Content-Type"] = "application/json"\n%s'
                 % (json.dumps(json.dumps(body)), lua_extra))
    script.close()
    out = subprocess.run(
        ["wrk", "-t", str(min(connections, 2)), "-c", str(connections), "-d", f"{seconds}s",
         "--latency", "-s", script.name, url + path],
        capture_output=True, text=True, check=True).stdout
    os.unlink(script.name)
    rate = float(next(l for l in out.splitlines() if l.startswith("Requests/sec")).split()[1])
    p50 = next(l for l in out.splitlines() if l.strip().startswith("50%")).split()[1]
    bad = [l.strip() for l in out.splitlines() if "Non-2xx" in l or "Socket errors" in l]
    return rate, p50, bad


def disk_floor_ms(directory, n=200):
    """The disk's floor for one durable commit, as a WAL commit in `sync` mode does it: a
    4 KiB write over the same block, then fdatasync. Median of n, in ms."""
    path = os.path.join(directory, "fsync-probe")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.pwrite(fd, b"x" * 4096, 0)
    os.fsync(fd)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        os.pwrite(fd, b"y" * 4096, 0)
        os.fdatasync(fd)
        times.append((time.perf_counter() - t0) * 1000)
    os.close(fd)
    os.unlink(path)
    return statistics.median(times)


def messages(plugins, work, mode, connections):
    """Increments to one counter: requests/s."""
    persistence = tempfile.mkdtemp(dir=work)
    proc, url, conn = start(plugins, persistence, ("--durability", mode))
    call(conn, "POST", "/paglets", {"class": "counter::Counter", "id": "bench"})
    # Warm up (the inline fast path needs a few messages), then measure.
    wrk(url, "/paglets/bench/messages", {"kind": "increment"}, connections, seconds=1)
    rate, p50, bad = wrk(url, "/paglets/bench/messages", {"kind": "increment"}, connections)
    stop(proc)
    shutil.rmtree(persistence, ignore_errors=True)
    return rate, p50, bad


def creates(plugins, work, mode, connections):
    persistence = tempfile.mkdtemp(dir=work)
    proc, url, _ = start(plugins, persistence, ("--durability", mode))
    rate, p50, bad = wrk(url, "/paglets", {"class": "counter::Counter"}, connections)
    stop(proc)
    shutil.rmtree(persistence, ignore_errors=True)
    return rate, p50, bad


def restore(plugins, persistence):
    """Start with a stored database: ms to the first /health 200, and the restore's own time
    from the host's log."""
    log = tempfile.TemporaryFile("w+")
    t0 = time.perf_counter()
    proc, _, conn = start(plugins, persistence, log=log)
    ready = (time.perf_counter() - t0) * 1000
    count = len(call(conn, "GET", "/paglets")[1])
    stop(proc)
    log.seek(0)
    took = re.search(r"restored stored paglets restored=(\d+).*took_ms=(\d+)", log.read())
    return ready, count, (int(took.group(2)) if took else None)


def main():
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release --workspace")
    work = tempfile.mkdtemp(prefix="paglets-durable-")
    plugins = os.path.join(work, "plugins")
    os.mkdir(plugins)
    shutil.copy(os.path.join(RELEASE, "libcounter.so"), plugins)
    try:
        floor = disk_floor_ms(work)
        print(f"disk floor: 4 KiB overwrite + fdatasync, median of 200: {floor:.2f} ms "
              f"(so at most {4 / floor * 1000:,.0f} messages/s when each commit holds 4)")
        # Interleaved rounds, medians: single runs on a shared machine vary.
        results = {}
        for _ in range(ROUNDS):
            for mode, connections in (("shutdown", 4), ("interval", 4), ("sync", 4),
                                      ("sync", 16), ("sync", 64)):
                rate, p50, bad = messages(plugins, work, mode, connections)
                results.setdefault((mode, connections), []).append((rate, p50, bad))
        for (mode, connections), runs in results.items():
            rates = [r for r, _, _ in runs]
            bad = [b for _, _, bs in runs for b in bs]
            print(f"messages to one counter, {mode}, {connections} connections: median "
                  f"{statistics.median(rates):,.0f}/s (runs {', '.join(f'{r:,.0f}' for r in rates)}; "
                  f"p50 {runs[len(runs) // 2][1]}) {' '.join(bad)}")
        ref = statistics.median(r for r, _, _ in results[("shutdown", 4)])
        interval = statistics.median(r for r, _, _ in results[("interval", 4)])
        print(f"interval / shutdown at 4 connections: {interval / ref:.2f}")
        for mode, connections in (("sync", 4), ("sync", 64), ("interval", 4)):
            rate, p50, bad = creates(plugins, work, mode, connections)
            print(f"creates, {mode}, {connections} connections: {rate:,.0f}/s (p50 {p50}) {' '.join(bad)}")

        # 10,000 counters through the API, stopped gracefully: the database's size, then a
        # start that restores them. 100,000: the same rows copied in SQL, then a start.
        stored = os.path.join(work, "stored")
        proc, _, conn = start(plugins, stored)
        for n in range(10000):
            status, _ = call(conn, "POST", "/paglets", {"class": "counter::Counter", "id": f"c{n}",
                                                        "state": {"count": n}})
            assert status == 201, status
        stop(proc)
        size = sum(os.path.getsize(os.path.join(stored, f)) for f in os.listdir(stored)
                   if f.startswith("paglets.db"))
        print(f"database size for 10,000 counters: {size / 1024:,.0f} KiB ({size / 10000:.0f} bytes each)")
        empty = os.path.join(work, "empty")
        ready, _, _ = restore(plugins, empty)
        print(f"start with an empty database to first /health 200: {ready:.0f} ms")
        for total in (10000, 100000):
            if total > 10000:
                db = sqlite3.connect(os.path.join(stored, "paglets.db"))
                for k in range(1, total // 10000):
                    db.execute("INSERT INTO paglets SELECT id || '-' || ?, class, state, state_version, "
                               "library, library_version, library_sha256, status, created_at, "
                               "messages_handled, queued FROM paglets WHERE id NOT LIKE '%-%'", (k,))
                db.commit()
                db.close()
            runs = [restore(plugins, stored) for _ in range(3)]
            ready = statistics.median(r for r, _, _ in runs)
            took = statistics.median(t for _, _, t in runs if t is not None)
            assert all(c == total for _, c, _ in runs), runs
            print(f"start restoring {total:,} paglets: restore {took:.0f} ms, first /health 200 "
                  f"after {ready:.0f} ms (median of 3)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
