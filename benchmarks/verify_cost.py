"""What checking a build against its source costs: `slmk convert` with and without verification.

On the 0.5B-shaped model of benchmarks/precision_sweep.py (Qwen2.5-0.5B's dimensions, random
weights, the tiny model's tokenizer), for each precision: `slmk convert --no-verify` and
`slmk convert` (the source run by transformers in fp32 on 3 chat prompts x 8 greedy tokens,
then the build on the same ids), each in its own process with an empty step cache, so both
build from scratch. Prints wall time and peak RSS of each and the ratios, and the seconds
the check itself recorded in slmk_build.json. Not a timed test: figures to read.

Usage: python benchmarks/verify_cost.py [--work DIR] [--precisions int4,fp32] [--layers N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from precision_sweep import ENV, make_shaped_model, mb


def convert(model: Path, output: Path, precision: str, cache: Path, verify: bool) -> dict:
    """One `slmk convert` in a fresh process: (seconds, peak RSS of that process tree, verification)."""
    command = [sys.executable, "-m", "slmk", "--quiet", "convert", str(model), "-p", precision, "-o", str(output)]
    env = {**os.environ, **ENV, "SLMK_CACHE_DIR": str(cache)}
    start = time.perf_counter()
    child = subprocess.Popen(command + ([] if verify else ["--no-verify"]), env=env, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    error = child.stderr.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"slmk convert failed:\n{error[-3000:]}")
    record = json.loads((output / "slmk_build.json").read_text())
    return {"seconds": seconds, "peak_rss_bytes": usage.ru_maxrss * 1024, "verification": record["verification"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", help="Folder for the model and builds [default: a temporary folder].")
    parser.add_argument("--precisions", default="int4,fp32")
    parser.add_argument("--layers", type=int, help="Fewer layers than the 24 of the 0.5B shape (a quick look).")
    args = parser.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="slmk-verify-cost-"))
    model = make_shaped_model(work / ("model" if not args.layers else f"model-{args.layers}l"), args.layers)
    print(f"model: {model} (0.5B-shaped{f', {args.layers} layers' if args.layers else ''}); load {os.getloadavg()}")
    print(
        f"{'precision':<9} {'convert alone':>14} {'with check':>11} {'ratio':>6} {'peak RSS alone':>15} "
        f"{'with check':>11} {'ratio':>6}  check's own seconds; result"
    )
    for precision in [p.strip() for p in args.precisions.split(",") if p.strip()]:
        alone = convert(model, work / f"{precision}-alone", precision, work / f"cache-{precision}-alone", False)
        checked = convert(model, work / f"{precision}-checked", precision, work / f"cache-{precision}-checked", True)
        found = checked["verification"]
        result = found.get("status")
        if result == "verified":
            result += f" (max logit diff {found['max_logit_diff']})"
        elif result == "measured":
            result += f" (agreement {found['token_agreement']}, cosine {found['logit_cosine']})"
        else:
            result += f": {found.get('reason')}"
        print(
            f"{precision:<9} {alone['seconds']:>13.1f}s {checked['seconds']:>10.1f}s "
            f"{checked['seconds'] / alone['seconds']:>6.2f} {mb(alone['peak_rss_bytes']):>15} "
            f"{mb(checked['peak_rss_bytes']):>11} {checked['peak_rss_bytes'] / alone['peak_rss_bytes']:>6.2f}  "
            f"{found.get('seconds', '?')}s; {result}"
        )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
