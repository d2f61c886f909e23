"""Time of a 12-cell sweep with 1 and with 2 local workers, as a ratio, and the per-cell costs.

The 12 cells: four fine-tunes of the embedded tiny model (copies that differ in their
generation_config.json, so each converts on its own) x fp32, int8, int4. Each run
starts from an empty step cache, so conversions are counted. Builds run side by side
with 2 workers; measurements are exclusive (they run alone), so the ratio stays below
2 by the share of measuring in a cell. The per-cell costs printed at the end feed the
cluster estimate in docs/sweep.md.

Usage: python benchmarks/sweep_scaling.py [--no-validate] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "examples" / "tiny-chat"
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("OLIVE_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def fine_tunes(root: Path, count: int) -> list[Path]:
    """``count`` copies of the tiny model, each with its own generation defaults."""
    models = []
    for i in range(count):
        folder = root / f"tune-{i}"
        shutil.copytree(TINY / "data", folder / "data")
        shutil.copytree(TINY / "model", folder / "model")
        config_file = folder / "model" / "generation_config.json"
        config = json.loads(config_file.read_text())
        config["temperature"] = round(0.5 + 0.1 * i, 2)
        config_file.write_text(json.dumps(config, indent=2))
        models.append(folder / "model")
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-validate", action="store_true")
    args = parser.parse_args()

    from slmk_measure.sweep import config_from_dict, run_sweep

    with tempfile.TemporaryDirectory(prefix="slmk-sweep-bench-") as tmp:
        root = Path(tmp)
        os.environ["SLMK_CACHE_DIR"] = str(root / "slmk-cache")
        models = fine_tunes(root / "models", 4)
        timings, results = {}, {}
        for workers in (1, args.workers):
            config = config_from_dict(
                {
                    "models": [str(m) for m in models],
                    "precisions": ["fp32", "int8", "int4"],
                    "cache_dir": str(root / f"cache-{workers}"),
                    "output": str(root / f"out-{workers}"),
                    "executor": {"name": "local", "workers": workers},
                    "validate": not args.no_validate,
                }
            )
            start = time.perf_counter()
            result = run_sweep(config)
            timings[workers] = time.perf_counter() - start
            results[workers] = result
            failed = [r["error"] for r in result["rows"] if r.get("error")]
            cells = len(result["rows"])
            print(f"{cells} cells, {workers} worker(s): {timings[workers]:.1f} s; failed: {failed or 'none'}")
        print(
            f"speed-up with {args.workers} workers: {timings[1] / timings[args.workers]:.2f}x ({os.cpu_count()} CPUs)"
        )
        rows = [r for r in results[1]["rows"] if not r.get("error")]
        print("per-cell costs (1 worker, median seconds):")
        for precision in ("fp32", "int8", "int4"):
            mine = [r for r in rows if r["precision"] == precision]
            if mine:
                print(
                    f"  {precision}: build {statistics.median(r['build_seconds'] for r in mine):.2f} s, "
                    f"measure{'' if args.no_validate else ' + validate'} "
                    f"{statistics.median(r['measure_seconds'] for r in mine):.2f} s"
                )


if __name__ == "__main__":
    main()
