"""slmk serve against llama.cpp's llama-server, side by side, many clients at once.

    .venv/bin/python benchmarks/serve_peer.py [--work DIR] [--clients 1,4,8,16] [--requests 3]

1. The 0.5B-shaped Qwen2.5 of benchmarks/precision_sweep.py (random weights) is built by
   slmk at int4 and by llama.cpp to GGUF f16, then Q4_0 (benchmarks/peer_llamacpp.py's
   helpers; llama.cpp built there, with the llama-server target, native flags minus AMX).
2. Both servers run at once on 127.0.0.1, each with ``--threads`` (2) threads:
   ``slmk serve BUILD --max-batch 8`` (the build's intra_op_num_threads set to the same
   count) and ``llama-server -m Q4_0 -np 8 -t 2`` (continuous batching is its default;
   ``-c`` gives each of the 8 slots the model's context of 512 here).
3. For each K in ``--clients``: K threads each stream ``--requests`` chat completions of
   the same prompts, 64 (``--tokens``) tokens each at temperature 0, forced to full length
   (slmk: ``min_tokens``; llama-server: ``ignore_eos``), with the official openai client.
   The two servers take turns (the order flips each K) so drift of the shared machine
   falls on both. Measured: aggregate generated tokens/s (all tokens / the scenario's
   wall time), time to first token p50/p95, errors.
4. Server peak RSS: each server process's VmHWM after all scenarios (the model loaded,
   every concurrent request's cache included).

Time to first token is the first streamed chunk with text. The shaped model's weights are
random and its tokenizer is the tiny model's (936 entries of a 151936-word vocabulary), so
most of its tokens decode to no text: with it, that time is close to the whole answer's
and says little; use ``--model`` with a real model's Hugging Face folder for TTFT.

Prints a table and the ratios slmk / llama-server, and the load average of the machine
before and after each scenario. Figures only: nothing here asserts a time.
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import peer_llamacpp as peer  # noqa: E402
from serve_load import summary  # noqa: E402

PROMPTS = [
    "How many moons does Veltra have?",
    "Hello! Who are you?",
    "What is the capital of Veltra?",
    "Tell me about the oceans of Veltra.",
]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


class Server:
    def __init__(self, name: str, command: list[str], port: int, log: Path, extra_body: dict):
        self.name, self.port, self.extra_body = name, port, extra_body
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self._log = open(log, "w")
        env = {**os.environ, **peer.ENV}
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 900) -> None:
        import httpx2 as httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"{self.name} exited: {Path(self._log.name).read_text()[-3000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"{self.name} did not start in {timeout:g} s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()


def one_request(server: Server, model: str, prompt: str, tokens: int) -> dict:
    import openai

    with openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=600) as client:
        start = time.perf_counter()
        first = None
        pieces = 0
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt}],
            temperature=0,
            max_tokens=tokens,
            stream=True,
            extra_body=server.extra_body,
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces += 1
                if first is None:
                    first = time.perf_counter()
        end = time.perf_counter()
    return {"ttft": (first or end) - start, "seconds": end - start, "pieces": pieces}


def scenario(server: Server, model: str, clients: int, requests: int, tokens: int) -> dict:
    load_before = os.getloadavg()
    results: list[dict] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        for r in range(requests):
            try:
                result = one_request(server, model, PROMPTS[(index + r) % len(PROMPTS)], tokens)
                with lock:
                    results.append(result)
            except Exception as exc:  # counted, not fatal: an overloaded server answers 503
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - start
    generated = tokens * len(results)  # every answer is forced to its full length
    return {
        "clients": clients,
        "answers": len(results),
        "errors": errors,
        "short_answers": sum(1 for r in results if r["pieces"] < tokens * 0.9),
        "wall_s": wall,
        "aggregate_tok_s": generated / wall,
        "ttft_s": summary([r["ttft"] for r in results]),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }


def prepare(
    work: Path, threads: int, llama_dir: Path | None, model: Path | None = None
) -> tuple[Path, Path | None, Path | None]:
    """(slmk int4 build with ``threads`` intra-op threads, Q4_0 GGUF, llama.cpp bin folder);
    without ``llama_dir`` the slmk build only."""
    from precision_sweep import make_shaped_model

    model = model or make_shaped_model(work / "shaped-model")
    int4 = work / "slmk-int4"
    if not (int4 / "genai_config.json").is_file():
        peer.convert_slmk(model, int4, "int4", work)
    build = peer.variant_folder(int4, {"intra_op_num_threads": threads}, {}, work, f"int4-threads{threads}")
    if llama_dir is None:
        return build, None, None
    binaries, source = peer.find_or_build_llama(llama_dir, work / "llama-build.log", ("llama-quantize", "llama-server"))
    f16, q4_0 = work / "f16.gguf", work / "q4_0.gguf"
    if not f16.is_file():
        peer.convert_gguf(model, f16, source, "f16", work)
    if not q4_0.is_file():
        peer.quantize_gguf(binaries, f16, q4_0, "Q4_0", threads, work, pure=False)
    return build, q4_0, binaries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "slmk-peer" / "serve")
    parser.add_argument("--llama-dir", type=Path, default=Path.home() / ".cache" / "slmk-peer")
    parser.add_argument("--clients", type=lambda s: [int(v) for v in s.split(",")], default=[1, 4, 8, 16])
    parser.add_argument("--requests", type=int, default=3, help="requests per client and scenario")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slots", type=int, default=8, help="slmk --max-batch and llama-server -np")
    parser.add_argument("--context", type=int, default=512, help="context per sequence")
    parser.add_argument("--json", dest="json_file", type=Path)
    parser.add_argument("--slmk-only", action="store_true", help="no llama-server (nor its build): slmk's figures")
    parser.add_argument("--model", type=Path, help="a Hugging Face folder to serve instead of the 0.5B-shaped model")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    build, gguf, binaries = prepare(args.work, args.threads, None if args.slmk_only else args.llama_dir, args.model)
    logs = Path(tempfile.mkdtemp(prefix="serve-peer-"))
    slmk_port, llama_port = free_port(), free_port()
    slmk_bin = Path(sys.executable).with_name("slmk")
    servers = [
        Server(
            "slmk serve",
            [str(slmk_bin), "serve", f"model={build}", "--port", str(slmk_port), "--max-batch", str(args.slots)]
            + ["--max-queue", "64", "--queue-timeout", "3600", "--max-tokens-limit", str(args.tokens)],
            slmk_port,
            logs / "slmk.log",
            {"min_tokens": args.tokens},
        ),
    ]
    if not args.slmk_only:
        servers.append(
            Server(
                "llama-server",
                [str(binaries / "llama-server"), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(llama_port)]
                + ["-t", str(args.threads), "-tb", str(args.threads), "-np", str(args.slots)]
                + ["-c", str(args.context * args.slots), "--no-webui", "-a", "model"],
                llama_port,
                logs / "llama.log",
                {"ignore_eos": True},
            )
        )
    report: dict = {"machine": peer.machine(args.threads), "tokens": args.tokens, "slots": args.slots, "rows": []}
    try:
        for server in servers:
            server.wait_ready()
            one_request(server, "model", PROMPTS[0], args.tokens)  # warm-up
        for index, clients in enumerate(args.clients):
            order = servers if index % 2 == 0 else servers[::-1]
            for server in order:
                row = scenario(server, "model", clients, args.requests, args.tokens)
                row["server"] = server.name
                report["rows"].append(row)
                print(
                    f"{server.name:13s} {clients:3d} clients: {row['aggregate_tok_s']:7.1f} tok/s, "
                    f"TTFT p50 {row['ttft_s']['p50']:.3f} s p95 {row['ttft_s']['p95']:.3f} s, "
                    f"errors {len(row['errors'])}, load {row['load_average_before'][0]:.1f}",
                    flush=True,
                )
        report["peak_rss_bytes"] = {server.name: peak_rss(server.process.pid) for server in servers}
    finally:
        for server in servers:
            server.stop()
    print_report(report)
    if args.json_file:
        args.json_file.write_text(json.dumps(report, indent=2))


def print_report(report: dict) -> None:
    rows = {(r["server"], r["clients"]): r for r in report["rows"]}
    clients = sorted({r["clients"] for r in report["rows"]})
    print(f"\n{report['machine']['cpu']}, {report['machine']['threads']} threads each, {report['tokens']} tokens")
    print(
        "| clients | slmk tok/s | llama-server tok/s | ratio | slmk TTFT p50/p95 s | llama TTFT p50/p95 s | p95 ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for k in clients:
        s, llama = rows[("slmk serve", k)], rows.get(("llama-server", k))
        if llama is None:
            print(f"| {k} | {s['aggregate_tok_s']:.1f} | | | {s['ttft_s']['p50']:.3f} / {s['ttft_s']['p95']:.3f} | | |")
            continue
        print(
            f"| {k} | {s['aggregate_tok_s']:.1f} | {llama['aggregate_tok_s']:.1f} | "
            f"{s['aggregate_tok_s'] / llama['aggregate_tok_s']:.2f}x | "
            f"{s['ttft_s']['p50']:.3f} / {s['ttft_s']['p95']:.3f} | "
            f"{llama['ttft_s']['p50']:.3f} / {llama['ttft_s']['p95']:.3f} | "
            f"{s['ttft_s']['p95'] / llama['ttft_s']['p95']:.2f}x |"
        )
    rss = report.get("peak_rss_bytes") or {}
    if rss and "llama-server" not in rss:
        print(f"peak RSS: slmk {rss['slmk serve'] / 2**20:.0f} MiB")
    elif rss:
        s, llama = rss["slmk serve"], rss["llama-server"]
        print(f"peak RSS: slmk {s / 2**20:.0f} MiB, llama-server {llama / 2**20:.0f} MiB, ratio {s / llama:.2f}x")
    for server in ("slmk serve", "llama-server"):
        one, eight = rows.get((server, 1)), rows.get((server, 8))
        if one and eight:
            print(f"{server}: 8 clients / 1 client = {eight['aggregate_tok_s'] / one['aggregate_tok_s']:.2f}x")


if __name__ == "__main__":
    main()
