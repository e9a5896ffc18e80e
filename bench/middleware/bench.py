"""Drives the middleware benchmark: for each app, requests alternate between /plain and
/guarded (one keep-alive connection each, the client address in X-Forwarded-For), and
the latency added by the middleware is the difference of the two routes' p50 and p99,
measured in the same run. banshare's answer for the address is cached after the warm-up.

    python bench.py BANSHARE_URL REQUESTS RUNS APP...   (APP: name=command line, PORT in it)
"""
import http.client
import socket
import statistics
import subprocess
import sys
import time

url, requests, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
CLIENT = "11.0.0.1"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def measure(port):
    conns = {r: http.client.HTTPConnection("127.0.0.1", port, timeout=5) for r in ("/plain", "/guarded")}
    times = {r: [] for r in conns}
    for i in range(200 + requests):
        for route, conn in conns.items():
            started = time.perf_counter()
            conn.request("GET", route, headers={"X-Forwarded-For": CLIENT})
            response = conn.getresponse()
            response.read()
            elapsed = (time.perf_counter() - started) * 1000
            assert response.status == 200, (route, response.status)
            if i >= 200:
                times[route].append(elapsed)
    return times


print(f"{'app':<10} {'plain p50':>10} {'plain p99':>10} {'guarded p50':>12} {'guarded p99':>12} {'added p50':>10} {'added p99':>10}")
for spec in sys.argv[4:]:
    name, command = spec.split("=", 1)
    port = free_port()
    server = subprocess.Popen(command.replace("PORT", str(port)).split(), stdout=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        rows = []
        for _ in range(runs):
            t = measure(port)
            rows.append([pct(t["/plain"], 0.5), pct(t["/plain"], 0.99), pct(t["/guarded"], 0.5), pct(t["/guarded"], 0.99)])
        med = [statistics.median(r[i] for r in rows) for i in range(4)]
        added = [statistics.median(r[2] - r[0] for r in rows), statistics.median(r[3] - r[1] for r in rows)]
        print(f"{name:<10} " + " ".join(f"{v:>10.3f}" for v in med[:2]) + " " +
              " ".join(f"{v:>12.3f}" for v in med[2:]) + " " + " ".join(f"{v:>10.3f}" for v in added) + "   (ms)")
    finally:
        server.terminate()
        server.wait()
