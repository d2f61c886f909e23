"""Where an slmk build spends its time: ONNX Runtime's own profiler, summed per operator type.

Prints, for one prefill of ``--prompt`` tokens and for ``--new-tokens`` decode steps after
a context of ``--depth`` tokens, the share of kernel time per operator type (MatMulNBits,
GroupQueryAttention, ...), from the profile ONNX Runtime writes when the build's
genai_config.json sets ``session_options.enable_profiling`` (a hard-linked copy of the
build gets that setting; the build itself is not touched).

Usage: python benchmarks/ort_profile.py BUILD [--prompt 512] [--depth 64] [--new-tokens 32] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ENV = {"ORT_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "1"}


def child(build: str, phase: str, prompt: int, depth: int, new_tokens: int) -> None:
    import onnxruntime_genai as og

    model = og.Model(build)
    ids = [random.Random(0).randrange(3, 900) for _ in range(max(prompt, depth))]
    params = og.GeneratorParams(model)
    if phase == "prefill":
        params.set_search_options(max_length=prompt + 1, do_sample=False)
        og.Generator(model, params).append_tokens(ids[:prompt])
    else:
        params.set_search_options(max_length=depth + new_tokens + 2, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(ids[:depth])
        for _ in range(new_tokens + 1):
            generator.generate_next_token()


def summarize(profile: Path, skip_runs: int) -> dict[str, float]:
    """Microseconds per operator type, from Node events, leaving out the first ``skip_runs`` model runs."""
    events = json.loads(profile.read_text())
    per_op: dict[str, float] = defaultdict(float)
    runs = 0
    for event in events:
        if event.get("cat") == "Session" and event.get("name") == "model_run":
            runs += 1
    seen_runs = 0
    for event in sorted(events, key=lambda e: e.get("ts", 0)):
        if event.get("cat") == "Session" and event.get("name") == "model_run":
            seen_runs += 1
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        if seen_runs < skip_runs:
            continue
        op = event.get("args", {}).get("op_name", "?")
        if "lm_head" in event["name"]:
            op += " (lm_head)"  # the output layer: vocabulary x hidden, the largest matrix
        per_op[op] += event.get("dur", 0)
    return dict(per_op)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("build", type=Path)
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--depth", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="slmk-profile-"))
    try:
        copy = work / "build"
        copy.mkdir()
        for item in args.build.iterdir():
            if item.is_file() and item.name != "genai_config.json":
                os.link(item, copy / item.name)
        config = json.loads((args.build / "genai_config.json").read_text())
        session = config["model"]["decoder"].setdefault("session_options", {})
        session.update({"enable_profiling": "ort_profile", "intra_op_num_threads": args.threads})
        (copy / "genai_config.json").write_text(json.dumps(config, indent=2))
        for phase in ("prefill", "decode"):
            run_dir = work / phase
            run_dir.mkdir()
            spec = [str(copy), phase, str(args.prompt), str(args.depth), str(args.new_tokens)]
            subprocess.run(
                [sys.executable, __file__, "--child", *spec], cwd=run_dir, check=True, env={**os.environ, **ENV}
            )
            profiles = sorted(run_dir.glob("*.json"))
            if not profiles:
                raise SystemExit(f"onnxruntime wrote no profile in {run_dir}")
            # decode: the first run is the depth prefill
            per_op = summarize(profiles[-1], skip_runs=1 if phase == "decode" else 0)
            total = sum(per_op.values()) or 1.0
            what = (
                f"prefill of {args.prompt} tokens"
                if phase == "prefill"
                else (f"{args.new_tokens} decode steps at depth {args.depth}")
            )
            print(f"\n{what} ({args.threads} threads): kernel time {total / 1000:.0f} ms")
            print("| operator | ms | share |")
            print("|---|---|---|")
            for op, micros in sorted(per_op.items(), key=lambda kv: -kv[1])[:8]:
                print(f"| {op} | {micros / 1000:.1f} | {micros / total:.0%} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
    else:
        main()
