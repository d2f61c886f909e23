"""slmk serve under load, on the loopback only: throughput, latency, memory, disconnects.

    .venv/bin/python benchmarks/serve_load.py [--build DIR] [--clients 1,4,16] [--requests 20]

1. Builds the tiny chat model at int4 (or takes ``--build``, or ``--shaped``).
2. Starts ``slmk serve`` in a subprocess on 127.0.0.1 (port 0) so its RSS is its own,
   and measures the same request in-process (the ortgenai runtime, no HTTP) and through
   the server, interleaved: what HTTP costs.
3. For each K in ``--clients``: K threads with the official openai client each stream M
   chat completions of exactly ``--tokens`` tokens (``min_tokens`` = ``max_tokens``):
   requests/s, tokens/s, time to first token and latency (p50, p95), errors by kind,
   server RSS before and after. Bounded: at most ``--max-seconds`` per scenario.
4. Overload: more clients than the model admits (``--max-queue``): how many get 503
   at once instead of hanging.
5. ``--disconnects`` clients that hang up after the first token: the server's active
   generations return to 0 and its RSS returns to where it was.

Figures only: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROMPT = "How many moons does Veltra have?"
MB = 1024 * 1024


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict[str, float | None]:
    return {"p50": percentile(values, 0.5), "p95": percentile(values, 0.95)}


def build_tiny(work: Path) -> Path:
    from slmk.api.operations import convert

    out = work / "tiny-int4"
    convert(REPO / "examples" / "tiny-chat" / "model", out, precision="int4")
    return out


def build_shaped(work: Path) -> Path:
    """precision_sweep.py's Qwen2.5-0.5B-shaped model (random weights), at int4: a realistic decode cost."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from precision_sweep import make_shaped_model

    from slmk.api.operations import convert

    out = work / "shaped-int4"
    if not (out / "genai_config.json").is_file():
        convert(make_shaped_model(work / "shaped-model"), out, precision="int4")
    return out


def reference(build: Path, server: Server, tokens: int, repeats: int) -> dict:
    """The same request in-process (no HTTP) and through the server, one after the other.

    Interleaved, so both see the same machine: on a shared machine the load of other
    work drifts by more than what HTTP costs a real model.
    """
    import openai

    from slmk.api.operations import open_session

    session = open_session(build)
    count = len(session.encode(session.render_prompt([{"role": "user", "content": PROMPT}])))
    search = {"do_sample": False, "max_new_tokens": tokens, "min_length": count + tokens}
    firsts, totals, http_firsts, http_totals = [], [], [], []
    try:
        with openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=300) as client:
            for _ in range(repeats):
                started = time.perf_counter()
                for _piece in session.generate([{"role": "user", "content": PROMPT}], **search):
                    pass
                totals.append(time.perf_counter() - started)
                # the runtime's clock: a random-weight model's tokens may decode to no text at all
                firsts.append(session.last_stats.time_to_first_token_s)
                first, total, _ = one_request(client, tokens)
                http_totals.append(total)
                if first is not None:
                    http_firsts.append(first)
    finally:
        session.close()
    return {
        "in_process": {
            "ttft_s": summary(firsts),
            "latency_s": summary(totals),
            "tokens_per_s": tokens * repeats / sum(totals),
        },
        "http": {
            "ttft_s": summary(http_firsts),
            "latency_s": summary(http_totals),
            "tokens_per_s": tokens * repeats / sum(http_totals),
        },
    }


class Server:
    """``slmk serve`` in a subprocess, on 127.0.0.1 and a free port."""

    def __init__(self, build: Path, *, max_batch: int, max_queue: int, max_connections: int):
        import psutil

        env = {**os.environ, "PYTHONUNBUFFERED": "1", "ORT_DISABLE_TELEMETRY": "1"}
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "slmk", "serve", f"bench={build}", "--port", "0", "--host", "127.0.0.1"),
                *("--max-batch", str(max_batch), "--max-queue", str(max_queue)),
                *("--max-connections", str(max_connections)),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        first = self.process.stdout.readline()
        if " at http://127.0.0.1:" not in first:
            self.process.kill()
            raise SystemExit(f"the server did not start: {first}{self.process.stderr.read()}")
        self.base_url = first.split(" at ")[1].split()[0]
        self.url = self.base_url.removesuffix("/v1")
        self.psutil = psutil.Process(self.process.pid)

    def rss_mb(self) -> float:
        return self.psutil.memory_info().rss / MB

    def health(self) -> dict:
        import httpx2 as httpx

        return httpx.get(self.url + "/health", timeout=30).json()["models"]["bench"]

    def wait_idle(self, timeout: float) -> float | None:
        """Seconds until no generation runs, or None if some still run after ``timeout``."""
        started = time.perf_counter()
        while time.perf_counter() - started < timeout:
            if self.health()["active"] == 0:
                return time.perf_counter() - started
            time.sleep(0.05)
        return None

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def one_request(client, tokens: int) -> tuple[float | None, float, int]:
    """(time to first text, latency, completion tokens) of one streamed chat completion.

    The first text, not token: a token that decodes to no text sends nothing (the
    random-weight --shaped model's tokens mostly do), so its time to first token is None.
    """
    started = time.perf_counter()
    first = None
    usage = 0
    stream = client.chat.completions.create(
        model="bench",
        messages=[{"role": "user", "content": PROMPT}],
        temperature=0,
        max_tokens=tokens,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"min_tokens": tokens},
    )
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - started
        if chunk.usage:
            usage = chunk.usage.completion_tokens
    return first, time.perf_counter() - started, usage


def load(server: Server, clients: int, requests: int, tokens: int, max_seconds: float) -> dict:
    import openai

    deadline = time.perf_counter() + max_seconds
    firsts, totals, errors, produced = [], [], {}, []
    lock = threading.Lock()

    def client_loop() -> None:
        with openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120) as client:
            for _ in range(requests):
                if time.perf_counter() > deadline:
                    return
                try:
                    first, total, count = one_request(client, tokens)
                except openai.APIStatusError as exc:
                    with lock:
                        errors[str(exc.status_code)] = errors.get(str(exc.status_code), 0) + 1
                    continue
                except openai.OpenAIError as exc:
                    with lock:
                        errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                with lock:
                    if first is not None:
                        firsts.append(first)
                    totals.append(total)
                    produced.append(count)

    rss_before = server.rss_mb()
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client_loop) for _ in range(clients)]:
            future.result()
    wall = time.perf_counter() - started
    return {
        "clients": clients,
        "requests": len(totals),
        "errors": errors,
        "seconds": round(wall, 2),
        "requests_per_s": len(totals) / wall,
        "tokens_per_s": sum(produced) / wall,
        "ttft_s": summary(firsts),
        "latency_s": summary(totals),
        "rss_before_mb": rss_before,
        "rss_after_mb": server.rss_mb(),
    }


def disconnects(server: Server, count: int, clients: int) -> dict:
    """``count`` streams, each closed by its client after the first token."""
    import httpx2 as httpx

    body = {
        "model": "bench",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 400,
        "min_tokens": 400,
        "stream": True,
    }
    rss_before = server.rss_mb()
    before = server.health()["outcomes"].get("cancelled", 0)

    def hang_up(_: int) -> bool:
        with (
            httpx.Client(timeout=60) as client,
            client.stream("POST", server.url + "/v1/chat/completions", json=body) as r,
        ):
            for line in r.iter_lines():
                if line.startswith("data: ") and '"content":"' in line and '"content":""' not in line:
                    return True
        return False

    with ThreadPoolExecutor(clients) as pool:
        got_a_token = sum(pool.map(hang_up, range(count)))
    idle_after = server.wait_idle(30)
    health = server.health()
    return {
        "disconnects": count,
        "got_first_token": got_a_token,
        "seconds_until_idle": idle_after,
        "active_after": health["active"],
        "cancelled": health["outcomes"].get("cancelled", 0) - before,
        "rss_before_mb": rss_before,
        "rss_after_mb": server.rss_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", type=Path, help="an slmk build folder [default: the tiny chat model at int4]")
    parser.add_argument(
        "--shaped", type=Path, metavar="WORK", help="build and serve a 0.5B-shaped int4 model in WORK (kept for reruns)"
    )
    parser.add_argument("--clients", default="1,4,16", help="concurrent clients per scenario")
    parser.add_argument("--requests", type=int, default=20, help="requests per client")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per answer (fixed with min_tokens)")
    parser.add_argument("--max-batch", type=int, default=8, help="answers per model decoded together")
    parser.add_argument("--max-queue", type=int, default=64, help="server queue per model")
    parser.add_argument("--overload-clients", type=int, default=32, help="clients for the overload scenario (0: skip)")
    parser.add_argument("--overload-queue", type=int, default=4, help="--max-queue of the overload server")
    parser.add_argument("--reference-repeats", type=int, default=20, help="in-process and HTTP runs, interleaved")
    parser.add_argument("--disconnects", type=int, default=200)
    parser.add_argument("--max-seconds", type=float, default=120, help="per scenario")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

    with tempfile.TemporaryDirectory(prefix="slmk-serve-load-") as work:
        build = args.build or (build_shaped(args.shaped) if args.shaped else build_tiny(Path(work)))
        report: dict = {"build": str(build), "tokens": args.tokens, "cpus": os.cpu_count()}
        server = Server(build, max_batch=args.max_batch, max_queue=args.max_queue, max_connections=512)
        try:
            load(server, 1, 3, args.tokens, args.max_seconds)  # warm-up: first-call allocations
            report["rss_after_warmup_mb"] = server.rss_mb()
            report["reference"] = reference(build, server, args.tokens, args.reference_repeats)
            report["load"] = [
                load(server, int(k), args.requests, args.tokens, args.max_seconds) for k in args.clients.split(",")
            ]
            report["disconnect"] = disconnects(server, args.disconnects, clients=8)
        finally:
            server.stop()
        if args.overload_clients:
            server = Server(build, max_batch=args.max_batch, max_queue=args.overload_queue, max_connections=512)
            try:
                report["overload"] = {
                    "max_queue": args.overload_queue,
                    **load(server, args.overload_clients, 2, args.tokens, args.max_seconds),
                }
            finally:
                server.stop()

    ms = lambda s: "-" if s is None else f"{s * 1000:.1f}"  # noqa: E731
    print(f"build {report['build']}, {args.tokens} tokens per answer, {report['cpus']} CPUs")
    for label, ref in (
        ("in-process ortgenai", report["reference"]["in_process"]),
        ("slmk serve, 1 client", report["reference"]["http"]),
    ):
        print(
            f"{label:<21} first token p50 {ms(ref['ttft_s']['p50'])} ms, latency p50 {ms(ref['latency_s']['p50'])}"
            f" / p95 {ms(ref['latency_s']['p95'])} ms, {ref['tokens_per_s']:.0f} tokens/s"
            " (interleaved)"
        )
    print(
        f"{'clients':>7} {'requests':>8} {'errors':>8} {'req/s':>7} {'tok/s':>7} {'TTFT p50':>9} {'p95':>7}"
        f" {'latency p50':>12} {'p95':>7} {'RSS MB before/after':>20}"
    )
    rows = [*report["load"], *([report["overload"]] if "overload" in report else [])]
    for row in rows:
        errors = sum(row["errors"].values())
        print(
            f"{row['clients']:>7} {row['requests']:>8} {errors:>8} {row['requests_per_s']:>7.1f}"
            f" {row['tokens_per_s']:>7.0f} {ms(row['ttft_s']['p50']):>9} {ms(row['ttft_s']['p95']):>7}"
            f" {ms(row['latency_s']['p50']):>12} {ms(row['latency_s']['p95']):>7}"
            f" {row['rss_before_mb']:>9.1f}/{row['rss_after_mb']:<9.1f}"
            + (f"  overload (max-queue {row['max_queue']}): {row['errors']}" if "max_queue" in row else "")
        )
    d = report["disconnect"]
    print(
        f"disconnects: {d['disconnects']} streams closed after the first token ({d['got_first_token']} got one);"
        f" idle {d['seconds_until_idle']} s later, active generations {d['active_after']};"
        f" RSS {d['rss_before_mb']:.1f} -> {d['rss_after_mb']:.1f} MB"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
