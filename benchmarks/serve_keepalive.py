"""What a kept-alive connection costs against a fresh one: GET /v1/models, median of N.

    .venv/bin/python benchmarks/serve_keepalive.py [--build DIR] [--requests 200]

Starts ``slmk serve`` in a subprocess (serve_load.py's Server) and times GET /v1/models
with the standard library's http.client: N requests on one kept-alive connection, and
N requests each on a new connection. Without TCP_NODELAY on the accepted socket, a
response written in two pieces waits for the client's delayed ACK (~40 ms on Linux) on a
reused connection. Figures only: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_load import Server, build_tiny


def median_ms(host: str, port: int, requests: int, *, keep_alive: bool) -> float:
    times = []
    connection = http.client.HTTPConnection(host, port, timeout=30)
    for _ in range(requests):
        if not keep_alive:
            connection.close()
            connection = http.client.HTTPConnection(host, port, timeout=30)
        started = time.perf_counter()
        connection.request("GET", "/v1/models")
        response = connection.getresponse()
        response.read()
        times.append(time.perf_counter() - started)
        if response.status != 200:
            raise SystemExit(f"GET /v1/models answered {response.status}")
    connection.close()
    return round(statistics.median(times) * 1000, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", type=Path, help="an slmk build folder [default: the tiny chat model at int4]")
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        build = args.build or build_tiny(Path(work))
        server = Server(build, parallel=1, max_queue=16, max_connections=256)
        try:
            where = urlsplit(server.url)
            median_ms(where.hostname, where.port, 20, keep_alive=True)  # warm-up
            report = {
                "requests": args.requests,
                "kept_alive_median_ms": median_ms(where.hostname, where.port, args.requests, keep_alive=True),
                "fresh_median_ms": median_ms(where.hostname, where.port, args.requests, keep_alive=False),
                "load_average": [round(x, 2) for x in os.getloadavg()],
            }
        finally:
            server.stop()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
