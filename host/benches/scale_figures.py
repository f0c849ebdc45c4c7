#!/usr/bin/env python3
"""Figures of `paglets host` with many paglets (docs/src/performance.md, "Many paglets").

Usage, from the repository root, after `cargo build --release --workspace`:

    python3 host/benches/scale_figures.py [N]        # N paglets, default 100000

It starts the release host on 127.0.0.1 with `counter` and `pi`, creates N counters over one
keep-alive connection, and prints: the mean time of a create over the first 1,000 and over the
last 1,000 (their ratio shows whether a create costs more with more paglets), `GET /paglets`
with N paglets, and `GET /paglets/{id}` of a paglet inside a long handler. It stops the host
it started and removes its temporary folders.
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
HEADERS = {"Content-Type": "application/json"}


class Client:
    """One keep-alive connection, opened again when the host closed it (it sheds idle ones)."""

    def __init__(self, host, port):
        self.host, self.port, self.conn = host, port, None

    def call(self, method, path, body=None):
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port)
            try:
                self.conn.request(method, path,
                                  body=json.dumps(body) if body is not None else None,
                                  headers=HEADERS)
                response = self.conn.getresponse()
                return response.status, response.read()
            except (http.client.RemoteDisconnected, ConnectionError):
                self.conn.close()
                self.conn = None
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    window = min(1000, n // 4)
    work = tempfile.mkdtemp(prefix="paglets-scale-")
    plugins = os.path.join(work, "plugins")
    os.mkdir(plugins)
    for lib in ["libcounter.so", "libpi.so"]:
        shutil.copy(os.path.join(RELEASE, lib), plugins)
    proc = subprocess.Popen(
        [BIN, "host", "--name", "scale", "--paths", plugins, "--port", "0",
         "--persistence-dir", os.path.join(work, "state"), "--no-watch"],
        stdout=subprocess.PIPE, stderr=open(os.environ.get("SCALE_LOG", os.devnull), "w"), text=True,
        env={**os.environ, "RUST_LOG": "warn", "PAGLETS_API_KEY": ""},
    )
    try:
        url = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
        host, port = url.removeprefix("http://").split(":")
        conn = Client(host, int(port))
        times = []
        for _ in range(n):
            started = time.perf_counter()
            status, _ = conn.call("POST", "/paglets", {"class": "counter::Counter"})
            times.append(time.perf_counter() - started)
            assert status == 201, status
        first = statistics.mean(times[:window]) * 1000
        last = statistics.mean(times[-window:]) * 1000
        print(f"create, mean of the first {window}: {first:.3f} ms")
        print(f"create, mean of the last {window} (with {n - window:,} live): {last:.3f} ms"
              f"  (ratio {last / first:.2f})")
        lists = []
        for _ in range(5):
            started = time.perf_counter()
            status, body = conn.call("GET", "/paglets")
            lists.append(time.perf_counter() - started)
            assert status == 200, status
        print(f"GET /paglets with {n:,}: median {statistics.median(lists) * 1000:.0f} ms "
              f"of 5, {len(body) / 1e6:.1f} MB")
        status, body = conn.call("POST", "/paglets", {"class": "pi::Pi", "id": "busy"})
        assert status == 201, status

        def long_handler():
            try:
                Client(host, int(port)).call("POST", "/paglets/busy/messages",
                                             {"kind": "digits", "args": {"n": 100000}})
            except OSError:
                pass  # the host is stopped before this long handler ends

        runner = threading.Thread(target=long_handler, daemon=True)
        runner.start()
        while json.loads(conn.call("GET", "/paglets/busy")[1]).get("busy") is not True:
            time.sleep(0.01)
        details = []
        for _ in range(200):
            started = time.perf_counter()
            status, body = conn.call("GET", "/paglets/busy")
            details.append(time.perf_counter() - started)
            assert json.loads(body)["busy"] is True, body
        details.sort()
        print(f"GET /paglets/{{id}} while its handler runs: p50 "
              f"{details[len(details) // 2] * 1000:.2f} ms, max {details[-1] * 1000:.2f} ms "
              f"of 200")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
