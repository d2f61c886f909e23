"""LoRA adapters: what merging and separate adapter files cost on the tiny model.

    .venv/bin/python benchmarks/lora.py [--work /tmp/lora-bench] [--json out.json]

Prints: checking an adapter (JSON + safetensors headers), merging it into the fp32 base,
building merged and separate (int4), the sizes of the builds and of the .onnx_adapter
file, the first load of an adapter into a loaded model, and the time per answer with and
without the adapter (median of 5 over the adapter's 20 eval questions). Figures, not
assertions: nothing here fails on a slow machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
ADAPTER = REPO / "examples" / "tiny-chat-lora" / "adapter"
EVAL = REPO / "examples" / "tiny-chat-lora" / "data" / "eval.jsonl"


def timed(call):
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start


def size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="slmk-lora-bench-"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.environ["SLMK_CACHE_DIR"] = str(work / "cache")

    from slmk_ortgenai import adapters

    from slmk.api import ConvertRequest
    from slmk.api.operations import open_session

    figures: dict[str, float] = {}
    adapter, figures["resolve_s"] = timed(lambda: adapters.resolve(ADAPTER))
    merged_dir = work / "merged-hf"
    merged_dir.mkdir()
    _, figures["merge_s"] = timed(lambda: adapters.merge(adapter, merged_dir))
    builds = {}
    for mode in adapters.MODES:
        out = work / f"{mode}-int4"
        _, figures[f"convert_{mode}_int4_s"] = timed(
            lambda out=out, mode=mode: adapters.convert_adapter(
                ConvertRequest(ADAPTER, out, precision="int4", source_mode=mode)
            )
        )
        builds[mode] = out
        figures[f"{mode}_int4_bytes"] = size(out)
    adapter_file = builds["separate"] / "adapters" / f"{adapter.name}.onnx_adapter"
    figures["onnx_adapter_bytes"] = adapter_file.stat().st_size

    questions = [json.loads(line)["messages"] for line in EVAL.read_text().splitlines() if line.strip()]

    def answer_all(session, **extra) -> None:
        for messages in questions:
            "".join(session.generate(messages, do_sample=False, max_new_tokens=48, **extra))

    with open_session(builds["separate"]) as session:
        _, figures["first_adapter_load_s"] = timed(lambda: session.load_adapter(adapter.name))
        for label, extra in (("base", {}), ("adapter", {"adapter": adapter.name})):
            runs = [timed(lambda extra=extra: answer_all(session, **extra))[1] for _ in range(5)]
            figures[f"separate_{label}_20_answers_s"] = statistics.median(runs)
    with open_session(builds["merge"]) as session:
        runs = [timed(lambda: answer_all(session))[1] for _ in range(5)]
        figures["merged_20_answers_s"] = statistics.median(runs)

    for key, value in figures.items():
        print(f"{key:32s} {value:,.4f}" if isinstance(value, float) else f"{key:32s} {value:,}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
