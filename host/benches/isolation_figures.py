#!/usr/bin/env python3
"""Figures of worker processes (`--isolate`) for docs/src/performance.md.

Usage, from the repository root, after `cargo build --release --workspace` (and
`cargo run -q -p paglets-e2e --bin build-fixtures` for the crashy fixture):

    python3 host/benches/isolation_figures.py       # needs `wrk` and `cc` on PATH

Figures, in one run:
- the floor: a bare 64-byte round trip over a socketpair between two processes (C, p50);
- the added latency of a message to an isolated `counter` over an in-process one (p50 of
  sequential messages on one keep-alive connection, the two hosts interleaved), and its ratio
  to the floor;
- throughput with 4 connections, each to its own isolated counter of one library (wrk);
- from a worker killed with SIGKILL to the next message answered (median);
- memory of 100 isolated counters (the worker's RSS, and the host's).
It stops every process it started.
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
HEADERS = {"Content-Type": "application/json"}

PINGPONG = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y);
}
int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 20000, fds[2]; char buf[64];
    memset(buf, 'x', sizeof buf);
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds)) return 1;
    pid_t child = fork();
    if (child == 0) {
        close(fds[0]);
        while (read(fds[1], buf, sizeof buf) == sizeof buf) write(fds[1], buf, sizeof buf);
        _exit(0);
    }
    close(fds[1]);
    double *t = malloc(sizeof(double) * n);
    for (int i = 0; i < n + 1000; i++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        write(fds[0], buf, sizeof buf);
        if (read(fds[0], buf, sizeof buf) != sizeof buf) return 1;
        clock_gettime(CLOCK_MONOTONIC, &b);
        if (i >= 1000) t[i - 1000] = (b.tv_sec - a.tv_sec) * 1e6 + (b.tv_nsec - a.tv_nsec) / 1e3;
    }
    close(fds[0]); waitpid(child, 0, 0);
    qsort(t, n, sizeof(double), cmp);
    printf("%.1f %.1f\n", t[n / 2], t[n * 99 / 100]);
    return 0;
}
"""


def start(plugins, persistence, extra=()):
    proc = subprocess.Popen(
        [BIN, "host", "--name", "bench", "--paths", plugins, "--port", "0",
         "--persistence-dir", persistence, "--no-watch", "--no-mesh", *extra],
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
    conn.request(method, path, body=json.dumps(body) if body is not None else None,
                 headers=HEADERS if method == "POST" else {})
    response = conn.getresponse()
    data = response.read()
    return response.status, (json.loads(data) if data else None)


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker_pid(conn, library):
    _, libraries = call(conn, "GET", "/libraries")
    for lib in libraries:
        if lib.get("name") == library:
            return lib["isolation"]["worker_pid"]
    return None


def floor():
    work = tempfile.mkdtemp(prefix="paglets-pingpong-")
    try:
        src = os.path.join(work, "pingpong.c")
        with open(src, "w") as f:
            f.write(PINGPONG)
        exe = os.path.join(work, "pingpong")
        subprocess.run(["cc", "-O2", "-o", exe, src], check=True)
        p50, p99 = subprocess.run([exe, "20000"], capture_output=True, text=True,
                                  check=True).stdout.split()
        return float(p50), float(p99)
    finally:
        shutil.rmtree(work)


def latencies(conn, path, n):
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        status, _ = call(conn, "POST", path, {"kind": "increment"})
        out.append((time.perf_counter() - t0) * 1e6)
        assert status == 200, status
    return out


def wrk_spread(url, ids, seconds=10):
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write(
        'local ids = {%s}\nlocal n = 0\n'
        'function setup(thread) n = n + 1; thread:set("id", ids[n]) end\n'
        'function init(args) path = "/paglets/" .. id .. "/messages" end\n'
        'function request() return wrk.format("POST", path, '
        '{["Content-Type"] = "application/json"}, \'{"kind": "increment"}\') end\n'
        % ", ".join(json.dumps(i) for i in ids))
    script.close()
    out = subprocess.run(
        ["wrk", "-t", str(len(ids)), "-c", str(len(ids)), "-d", f"{seconds}s", "--latency",
         "-s", script.name, url], capture_output=True, text=True, check=True).stdout
    os.unlink(script.name)
    rate = float(next(l for l in out.splitlines() if l.startswith("Requests/sec")).split()[1])
    errors = [l for l in out.splitlines() if "Non-2xx" in l or "Socket errors" in l]
    return rate, errors


def main():
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release --workspace")
    work = tempfile.mkdtemp(prefix="paglets-isolation-")
    plugins = os.path.join(work, "plugins")
    os.mkdir(plugins)
    shutil.copy(os.path.join(RELEASE, "libcounter.so"), plugins)
    procs = []
    try:
        p50_floor, p99_floor = floor()
        print(f"floor, 64-byte socketpair round trip between two processes: p50 {p50_floor:.1f} µs, "
              f"p99 {p99_floor:.1f} µs")

        local, _, lhost, lport = start(plugins, os.path.join(work, "local"))
        remote, rurl, rhost, rport = start(plugins, os.path.join(work, "remote"),
                                           ["--isolate", "counter"])
        procs += [local, remote]
        lconn = http.client.HTTPConnection(lhost, lport)
        rconn = http.client.HTTPConnection(rhost, rport)
        for conn in (lconn, rconn):
            assert call(conn, "POST", "/paglets", {"class": "counter::Counter", "id": "c"})[0] == 201
            latencies(conn, "/paglets/c/messages", 2000)  # warm up
        lat_local, lat_remote, differences = [], [], []
        for _ in range(20):  # interleaved rounds: the machine's noise hits both alike
            local_round = latencies(lconn, "/paglets/c/messages", 500)
            remote_round = latencies(rconn, "/paglets/c/messages", 500)
            differences.append(statistics.median(remote_round) - statistics.median(local_round))
            lat_local += local_round
            lat_remote += remote_round
        p50_local, p50_remote = statistics.median(lat_local), statistics.median(lat_remote)
        # The median over the rounds of each round's difference of p50s.
        added = statistics.median(differences)
        print(f"message p50 over HTTP: in-process {p50_local:.1f} µs, isolated {p50_remote:.1f} µs, "
              f"added {added:.1f} µs = {added / p50_floor:.2f}x the floor (goal <= 1.5x)")
        stop(local)
        procs.remove(local)

        ids = []
        for n in range(4):
            ids.append(f"t{n}")
            assert call(rconn, "POST", "/paglets", {"class": "counter::Counter", "id": ids[-1]})[0] == 201
        rates = []
        for _ in range(3):
            rate, errors = wrk_spread(rurl, ids)
            rates.append(rate)
            if errors:
                print("  wrk:", errors)
        print(f"throughput, 4 connections each to its own isolated counter: median "
              f"{statistics.median(rates):,.0f}/s ({min(rates):,.0f}-{max(rates):,.0f}, 3 runs of 10 s; "
              f"goal >= 10,000/s)")

        # Worker killed -> the next message answered (4 kills per host: 5 in 60 s quarantine).
        recoveries = []
        # The keep-alive connection idled through wrk: the host closed it.
        rconn = http.client.HTTPConnection(rhost, rport)
        for round_ in range(3):
            if round_ > 0:
                stop(remote)
                procs.remove(remote)
                remote, rurl, rhost, rport = start(plugins, os.path.join(work, f"crash{round_}"),
                                                   ["--isolate", "counter"])
                procs.append(remote)
                rconn = http.client.HTTPConnection(rhost, rport)
                assert call(rconn, "POST", "/paglets", {"class": "counter::Counter", "id": "c"})[0] == 201
            for _ in range(4):
                call(rconn, "POST", "/paglets/c/messages", {"kind": "increment"})
                pid = worker_pid(rconn, "counter")
                t0 = time.perf_counter()
                os.kill(pid, signal.SIGKILL)
                # A message sent before the host saw the death is in flight: 500 paglet-crashed.
                while True:
                    status, body = call(rconn, "POST", "/paglets/c/messages", {"kind": "get"})
                    if status == 200:
                        break
                    assert body["error"]["code"] == "paglet-crashed", body
                recoveries.append((time.perf_counter() - t0) * 1000)
        print(f"worker SIGKILLed -> next message answered: median {statistics.median(recoveries):.1f} ms "
              f"({min(recoveries):.1f}-{max(recoveries):.1f}, {len(recoveries)} crashes; goal < 200 ms)")

        for n in range(100):
            assert call(rconn, "POST", "/paglets", {"class": "counter::Counter", "id": f"m{n}"})[0] == 201
            call(rconn, "POST", f"/paglets/m{n}/messages", {"kind": "increment"})
        time.sleep(1)
        pid = worker_pid(rconn, "counter")
        worker, host = rss_mib(pid), rss_mib(remote.pid)
        print(f"memory, 100 isolated counters (+1): worker RSS {worker:.1f} MiB, host RSS {host:.1f} MiB, "
              f"together {worker + host:.1f} MiB (goal < 50 MiB)")
    finally:
        for proc in procs:
            try:
                stop(proc)
            except Exception:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
