"""Start-up and conversion overhead of slmk against the tools it drives.

Prints:
  - `slmk --help` cold start (median of N runs) against a bare `python -c pass`
  - `slmk convert` wall time (empty step cache) against calling the ONNX Runtime GenAI
    model builder directly on the same model, same precision, as a ratio
  - a second `slmk convert` with the step cache warm

Usage: python benchmarks/cli_and_convert.py [--model DIR] [--precision int4] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO / "examples" / "tiny-chat" / "model"))
    parser.add_argument("--precision", default="int4")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="slmk-bench-") as tmp:
        tmp_path = Path(tmp)
        env = {
            **os.environ,
            "ORT_DISABLE_TELEMETRY": "1",
            "OLIVE_DISABLE_TELEMETRY": "1",
            "HF_HUB_OFFLINE": "1",
            "SLMK_CACHE_DIR": str(tmp_path / "cache"),
        }

        bare = statistics.median(timed([py, "-c", "pass"], env) for _ in range(args.runs))
        helps = statistics.median(timed([py, "-m", "slmk", "--help"], env) for _ in range(args.runs))
        print(f"python -c pass        {bare * 1000:7.0f} ms (median of {args.runs})")
        print(
            f"slmk --help           {helps * 1000:7.0f} ms   ratio {helps / bare:.2f}x bare python, "
            f"{(helps - bare) * 1000:.0f} ms of slmk"
        )

        builder = []
        slmk_cold = []
        for run in range(max(1, args.runs // 2)):
            builder.append(
                timed(
                    [
                        py,
                        "-m",
                        "onnxruntime_genai.models.builder",
                        "-i",
                        args.model,
                        "-o",
                        str(tmp_path / f"direct-{run}"),
                        "-p",
                        args.precision,
                        "-e",
                        "cpu",
                        "-c",
                        str(tmp_path / f"hf-{run}"),
                    ],
                    env,
                )
            )
            run_env = {**env, "SLMK_CACHE_DIR": str(tmp_path / f"cache-{run}")}
            slmk_cold.append(
                timed(
                    [
                        py,
                        "-m",
                        "slmk",
                        "-q",
                        "convert",
                        args.model,
                        "-p",
                        args.precision,
                        "-o",
                        str(tmp_path / f"slmk-{run}"),
                    ],
                    run_env,
                )
            )
        warm = timed(
            [
                py,
                "-m",
                "slmk",
                "-q",
                "convert",
                args.model,
                "-p",
                args.precision,
                "-o",
                str(tmp_path / "slmk-0"),
                "--force",
            ],
            {**env, "SLMK_CACHE_DIR": str(tmp_path / "cache-0")},
        )
        b, s = statistics.median(builder), statistics.median(slmk_cold)
        print(f"builder directly      {b:7.2f} s  ({args.precision}, median of {len(builder)})")
        print(f"slmk convert (cold)   {s:7.2f} s   ratio {s / b:.2f}x the builder")
        print(f"slmk convert (cached) {warm:7.2f} s   ratio {warm / b:.2f}x the builder")


if __name__ == "__main__":
    main()
