#!/usr/bin/env python3
"""Mesh figures of `paglets host` (docs/src/performance.md, "The mesh").

Usage, from the repository root, after `cargo build --release --workspace`:

    python3 host/benches/mesh_figures.py            # needs `wrk` (apt-get install -y wrk)
    python3 host/benches/mesh_figures.py 10         # only the N = 10 figures
    python3 host/benches/mesh_figures.py throughput # only the throughput rounds

For N = 10 and N = 50 it starts N release hosts on 127.0.0.1 (LAN defaults: 1 s probe
period), each seeded with one other (host i with host i-1, host 0 with host N-1), and
measures:

- convergence: from the last host's start until every host lists all N as alive;
- cost: mesh requests sent and received per host per second (`mesh.requests_sent` and
  `mesh.requests_received` of /health) and CPU per host (utime + stime of /proc/PID/stat)
  over 20 s of steady state;
- failure detection: SIGKILL one host, time until every other host lists it as down.

Then the HTTP message throughput of one host (wrk, 1 connection, `increment` on a counter)
alone with --no-mesh and as a member of a 10-host mesh, in interleaved rounds, and the median
ratio. Every process it starts is stopped before it exits.
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
BASE_PORT = 19100
TICKS = os.sysconf("SC_CLK_TCK")
PROCS = []
DIRS = []


def start(name, port, peers, plugins, extra=()):
    persistence = tempfile.mkdtemp(prefix=f"mesh-{name}-")
    DIRS.append(persistence)
    args = [BIN, "host", "--name", name, "--paths", plugins, "--port", str(port),
            "--persistence-dir", persistence, "--no-watch", *extra]
    for peer in peers:
        args += ["--peer", peer]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "RUST_LOG": "warn", "PAGLETS_API_KEY": ""})
    proc.stdout.readline()
    PROCS.append(proc)
    return proc, f"http://127.0.0.1:{port}"


def stop_all():
    for proc in PROCS:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in PROCS:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    PROCS.clear()


def get(url, path):
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    except (OSError, ValueError):
        return None
    finally:
        conn.close()


def states(url):
    answer = get(url, "/mesh/hosts")
    return {h["name"]: h["state"] for h in answer["hosts"]} if answer else {}


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def mesh_of(n, plugins):
    """Starts n hosts in a ring of seeds; returns [(proc, url)] and the time the last started."""
    hosts = []
    for i in range(n):
        peer = f"http://127.0.0.1:{BASE_PORT + (i - 1) % n}"
        hosts.append(start(f"h{i}", BASE_PORT + i, [peer], plugins))
    return hosts, time.monotonic()


def wait_until(check, deadline=120):
    start = time.monotonic()
    while time.monotonic() - start < deadline:
        if check():
            return time.monotonic()
        time.sleep(0.05)
    raise SystemExit("timed out")


def figures(n, plugins):
    hosts, last_start = mesh_of(n, plugins)
    names = {f"h{i}" for i in range(n)}
    done = wait_until(lambda: all(
        (s := states(url)).keys() >= names and all(s[x] == "alive" for x in names)
        for _, url in hosts))
    print(f"N={n}: convergence {done - last_start:.2f} s after the last start", flush=True)

    time.sleep(5)
    before = [(get(url, "/health")["mesh"], cpu_seconds(p.pid)) for p, url in hosts]
    t0 = time.monotonic()
    time.sleep(20)
    after = [(get(url, "/health")["mesh"], cpu_seconds(p.pid)) for p, url in hosts]
    span = time.monotonic() - t0
    rates, cpus = [], []
    for (m0, c0), (m1, c1) in zip(before, after):
        sent = m1["requests_sent"] - m0["requests_sent"]
        received = m1["requests_received"] - m0["requests_received"]
        rates.append((sent + received) / span)
        cpus.append(100 * (c1 - c0) / span)
    print(f"N={n}: mesh requests per host per second (sent + received): median "
          f"{statistics.median(rates):.1f}, max {max(rates):.1f}", flush=True)
    print(f"N={n}: CPU per host: median {statistics.median(cpus):.2f} %, max {max(cpus):.2f} % "
          f"of one core", flush=True)

    victim = n // 2
    proc, _ = hosts[victim]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = time.monotonic()
    others = [url for i, (_, url) in enumerate(hosts) if i != victim]
    seen = wait_until(lambda: all(states(url).get(f"h{victim}") == "down" for url in others))
    print(f"N={n}: SIGKILL to down on every other host: {seen - killed:.2f} s", flush=True)
    stop_all()


def wrk_rate(url, seconds=5):
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write('wrk.method = "POST"\nwrk.body = \'{"kind": "increment"}\'\n'
                 'wrk.headers["Content-Type"] = "application/json"\n')
    script.close()
    out = subprocess.run(["wrk", "-t", "1", "-c", "1", "-d", f"{seconds}s", "-s", script.name,
                          url + "/paglets/bench/messages"],
                         capture_output=True, text=True, check=True).stdout
    os.unlink(script.name)
    return float(next(l for l in out.splitlines() if l.startswith("Requests/sec")).split()[1])


def measured_host(plugins, extra):
    _, url = start("measured", BASE_PORT + 99, [], plugins, extra)
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request("POST", "/paglets", json.dumps({"class": "counter::Counter", "id": "bench"}),
                 {"Content-Type": "application/json"})
    created = conn.getresponse()
    created.read()
    assert created.status == 201, created.status
    for _ in range(20):  # warm-up: the paglet becomes eligible to run inline
        conn.request("POST", "/paglets/bench/messages", '{"kind": "increment"}',
                     {"Content-Type": "application/json"})
        conn.getresponse().read()
    conn.close()
    return url


def settled_rate(url):
    """A 2 s warm-up run (discarded), then the measured 5 s."""
    time.sleep(2)
    wrk_rate(url, 2)
    return wrk_rate(url)


def alone_rate(examples):
    url = measured_host(examples, ["--no-mesh"])
    rate = settled_rate(url)
    stop_all()
    return rate


def meshed_rate(empty, examples):
    hosts, _ = mesh_of(9, empty)
    url = measured_host(examples, ["--peer", hosts[0][1]])
    wait_until(lambda: sum(1 for s in states(url).values() if s == "alive") == 10)
    rate = settled_rate(url)
    stop_all()
    return rate


def throughput(empty, examples, rounds=4):
    ratios = []
    for r in range(rounds):
        # Alternate which arm goes first, so a drift in the machine's load hits both.
        if r % 2 == 0:
            alone = alone_rate(examples)
            meshed = meshed_rate(empty, examples)
        else:
            meshed = meshed_rate(empty, examples)
            alone = alone_rate(examples)
        ratios.append(meshed / alone)
        print(f"round {r + 1}: alone {alone:.0f}/s, in a 10-host mesh {meshed:.0f}/s, "
              f"ratio {meshed / alone:.3f}", flush=True)
    print(f"throughput in a 10-host mesh / alone: median ratio {statistics.median(ratios):.3f}",
          flush=True)


def main():
    if not os.path.exists(BIN):
        raise SystemExit(f"{BIN} is missing: run cargo build --release --workspace")
    only_throughput = sys.argv[1:] == ["throughput"]
    sizes = [] if only_throughput else [int(a) for a in sys.argv[1:]] or [10, 50]
    empty = tempfile.mkdtemp(prefix="mesh-plugins-")
    examples = tempfile.mkdtemp(prefix="mesh-examples-")
    DIRS.extend([empty, examples])
    subprocess.run(["cp", os.path.join(RELEASE, "libcounter.so"), examples], check=True)
    try:
        for n in sizes:
            figures(n, empty)
        if only_throughput or not sys.argv[1:]:
            throughput(empty, examples)
    finally:
        stop_all()
        for path in DIRS:
            shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()
