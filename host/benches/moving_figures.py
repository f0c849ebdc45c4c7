#!/usr/bin/env python3
"""Figures of moving paglets (docs/src/performance.md, "Moving paglets").

Usage, from the repository root, after `cargo build --release --workspace`:

    python3 host/benches/moving_figures.py          # needs `wrk` on PATH (apt-get install -y wrk)

It starts two release hosts, `a` and `b`, on 127.0.0.1 with the example libraries, in the
default durability mode (`interval`: the departing and arriving records are committed before
the next step; in this mode SQLite's WAL commits without waiting for the disk, which a crash
of the process survives, while `sync` mode waits for the disk — the disk's own commit
latency is printed first for reference),
and measures over HTTP with one keep-alive connection per host:

- dispatch of a small paglet (a counter) back and forth between a and b: p50 and p99 of the
  `POST /paglets/{id}/dispatch` call (goal: p50 < 2 ms);
- 1,000 counters dispatched from a to b one after another: the total (goal: < 2 s);
- a paglet with a 10 MiB state (`hello::Hello` with a 10 MiB `greeting`) dispatched back and
  forth: median and worst of the calls (goal: < 300 ms);
- deactivate + activate of a counter: p50 of the pair (goal: < 1 ms);
- oneway `increment` messages over HTTP at 4 connections (wrk, 5 s): answered 202 per second,
  and whether every one of them was delivered;
- paglet-to-paglet messages on one host through `ctx.send`: one `forward` message to a
  `hello::Hello` that sends `increment` to a counter 200,000 times (`times`), sends per second
  over the whole call, median of 3 (goal: >= 200,000/s).

It prints a table and stops every process it started.
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
EXAMPLES = ["libcounter.so", "libhello.so"]
BIG = 10 * 1024 * 1024
PROCS = []


def start(name, plugins, persistence, extra=()):
    proc = subprocess.Popen(
        [BIN, "host", "--name", name, "--paths", plugins, "--port", "0",
         "--persistence-dir", persistence, "--no-watch", "--no-mesh", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "RUST_LOG": "warn", "PAGLETS_API_KEY": ""},
    )
    PROCS.append(proc)
    url = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    while call(conn, "GET", "/health")[0] != 200:
        time.sleep(0.01)
    return url, conn


def stop_all():
    for proc in PROCS:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in PROCS:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    PROCS.clear()


def call(conn, method, path, body=None):
    headers = {"Content-Type": "application/json"} if method == "POST" else {}
    data = json.dumps(body) if body is not None else None
    conn.request(method, path, body=data, headers=headers)
    response = conn.getresponse()
    data = response.read()
    return response.status, (json.loads(data) if data else None)


def must(expected, answer, what):
    status, body = answer
    if status != expected:
        raise SystemExit(f"{what}: {status} {json.dumps(body)[:300]}")
    return body


def timed(conn, method, path, body=None, expected=200):
    t0 = time.perf_counter()
    answer = call(conn, method, path, body)
    took = (time.perf_counter() - t0) * 1000
    must(expected, answer, f"{method} {path}")
    return took


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def disk_floor_ms(directory, n=200):
    """One 4 KiB overwrite + fdatasync, as a WAL commit does it: median of n, in ms."""
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


def back_and_forth(hosts, pid, rounds, warmup=0):
    """Dispatches `pid` from a to b and back `rounds` times; the times of the calls, in ms."""
    (url_a, conn_a), (url_b, conn_b) = hosts
    times = []
    for i in range(warmup + rounds):
        for conn, to in ((conn_a, url_b), (conn_b, url_a)):
            took = timed(conn, "POST", f"/paglets/{pid}/dispatch", {"to": to})
            if i >= warmup:
                times.append(took)
    return times


def oneway(url, conn, seconds=5, connections=4):
    """wrk at `connections` connections sending oneway increments to a fresh counter: the
    rate of 202 answers, how many there were, and how many the counter counted."""
    must(201, call(conn, "POST", "/paglets", {"class": "counter::Counter", "id": "ow"}), "create")
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write('wrk.method = "POST"\n'
                 'wrk.body = \'{"kind": "increment", "oneway": true}\'\n'
                 'wrk.headers["Content-Type"] = "application/json"\n')
    script.close()
    out = subprocess.run(
        ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "-s", script.name,
         url + "/paglets/ow/messages"],
        capture_output=True, text=True, check=True).stdout
    os.unlink(script.name)
    lines = out.splitlines()
    rate = float(next(l for l in lines if l.startswith("Requests/sec")).split()[1])
    answered = int(next(l for l in lines if " requests in " in l).split()[0])
    bad = [l.strip() for l in lines if "Non-2xx" in l or "Socket errors" in l]
    # Every 202 is a queued message: wait until the count stops growing.
    count, last, still = -1, None, 0
    while still < 20:
        count = must(200, call(conn, "POST", "/paglets/ow/messages", {"kind": "get"}),
                     "get")["reply"]["count"]
        still = still + 1 if count == last else 0
        last = count
        time.sleep(0.05)
    return rate, answered, count, bad


def sends(conn, times=200000, runs=3):
    """`ctx.send` from a hello to a counter on the same host, `times` per call: sends/s,
    median of `runs` calls."""
    must(201, call(conn, "POST", "/paglets", {"class": "hello::Hello", "id": "sender"}), "create")
    must(201, call(conn, "POST", "/paglets", {"class": "counter::Counter", "id": "sink"}), "create")
    warmup = {"kind": "forward", "args": {"to": "sink", "kind": "increment", "times": 1000}}
    must(200, call(conn, "POST", "/paglets/sender/messages", warmup), "warm-up")
    body = {"kind": "forward", "args": {"to": "sink", "kind": "increment", "times": times}}
    rates = []
    for _ in range(runs):
        took = timed(conn, "POST", "/paglets/sender/messages", body) / 1000
        rates.append(times / took)
    count = must(200, call(conn, "POST", "/paglets/sink/messages", {"kind": "get"}), "get")
    assert count["reply"]["count"] == 1000 + runs * times, count
    return statistics.median(rates), rates


def main():
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release --workspace")
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install -y wrk")
    work = tempfile.mkdtemp(prefix="paglets-moving-")
    plugins = os.path.join(work, "plugins")
    os.mkdir(plugins)
    for name in EXAMPLES:
        shutil.copy(os.path.join(RELEASE, name), plugins)
    rows = []
    try:
        floor = disk_floor_ms(work)
        print(f"disk floor: 4 KiB overwrite + fdatasync, median of 200: {floor:.2f} ms", flush=True)
        hosts = [start(name, plugins, os.path.join(work, name), ("--max-body", str(BIG + 65536)))
                 for name in ("a", "b")]
        (url_a, conn_a), (url_b, conn_b) = hosts

        must(201, call(conn_a, "POST", "/paglets", {"class": "counter::Counter", "id": "ping"}),
             "create ping")
        times = back_and_forth(hosts, "ping", rounds=500, warmup=20)
        p50, p99 = percentile(times, 50), percentile(times, 99)
        rows.append(("dispatch of a counter, a <-> b (1,000 calls)",
                     f"p50 {p50:.2f} ms, p99 {p99:.2f} ms", "p50 < 2 ms", p50 < 2))

        for n in range(1000):
            must(201, call(conn_a, "POST", "/paglets", {"class": "counter::Counter",
                                                        "id": f"many{n}", "state": {"count": n}}),
                 "create")
        t0 = time.perf_counter()
        for n in range(1000):
            must(200, call(conn_a, "POST", f"/paglets/many{n}/dispatch", {"to": url_b}), "dispatch")
        total = time.perf_counter() - t0
        moved = must(200, call(conn_b, "GET", "/paglets"), "list")
        assert sum(1 for r in moved if r["id"].startswith("many")) == 1000
        rows.append(("1,000 counters dispatched a -> b one after another",
                     f"{total:.2f} s ({total:.2f} ms each)", "< 2 s", total < 2))

        greeting = "x" * BIG
        must(201, call(conn_a, "POST", "/paglets", {"class": "hello::Hello", "id": "big",
                                                    "state": {"greeting": greeting}}), "create big")
        times = back_and_forth(hosts, "big", rounds=5, warmup=1)
        arrived = must(200, call(conn_a, "GET", "/paglets/big"), "GET big")
        assert arrived["state"]["greeting"] == greeting, "the 10 MiB state came back changed"
        median, worst = statistics.median(times), max(times)
        rows.append(("a paglet with a 10 MiB state, a <-> b (10 calls)",
                     f"median {median:.0f} ms, worst {worst:.0f} ms", "< 300 ms", median < 300))

        must(201, call(conn_a, "POST", "/paglets", {"class": "counter::Counter", "id": "nap"}),
             "create nap")
        pairs = []
        for i in range(520):
            took = timed(conn_a, "POST", "/paglets/nap/deactivate")
            took += timed(conn_a, "POST", "/paglets/nap/activate")
            if i >= 20:
                pairs.append(took)
        p50 = percentile(pairs, 50)
        rows.append(("deactivate + activate of a counter (500 pairs)",
                     f"p50 {p50:.2f} ms, p99 {percentile(pairs, 99):.2f} ms", "p50 < 1 ms",
                     p50 < 1))

        rate, answered, count, bad = oneway(url_a, conn_a)
        delivered = "all delivered" if count >= answered else f"only {count:,} delivered"
        rows.append(("oneway increments over HTTP, 4 connections (wrk, 5 s)",
                     f"{rate:,.0f}/s; {answered:,} answered 202, {delivered} {' '.join(bad)}",
                     "(figure)", count >= answered and not bad))

        rate, rates = sends(conn_b)
        rows.append(("ctx.send, hello -> counter on one host (200,000 per call)",
                     f"median {rate:,.0f}/s ({', '.join(f'{r:,.0f}' for r in rates)})",
                     ">= 200,000/s", rate >= 200000))
    finally:
        stop_all()
        shutil.rmtree(work, ignore_errors=True)

    width = max(len(r[0]) for r in rows)
    result_width = max(len(r[1]) for r in rows)
    print(f"{'figure':<{width}}  {'result':<{result_width}}  goal")
    for figure, result, goal, met in rows:
        print(f"{figure:<{width}}  {result:<{result_width}}  {goal} "
              f"{'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
