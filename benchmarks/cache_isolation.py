"""What isolating builds, the step cache and installs costs, on a 0.5B-shaped model.

Since slmk 0.x (issue #10, point 3) a finished step's files are read-only and carry a
manifest (size + sha256 of each file); a cached step is verified before it is reused;
builds and installs receive copies (reflinks where the filesystem has them) instead of
hard links. This prints what that costs, not a test: nothing here asserts a time.

1. Makes a model with Qwen2.5-0.5B's dimensions (benchmarks/precision_sweep.py,
   ``--layers`` fewer to save time) and converts it at ``--precision`` (int4) into a
   private step cache: the first convert (the builder runs; the manifest is written).
2. Times, on that cached step: writing the manifest (sha256 of every file), verifying
   it (what a cached convert does first), a copy of the step into a build (what it then
   does), and the hard link it replaced; a cached convert end to end.
3. Installs the build into a private Foundry cache: the install end to end, and the
   whole-ONNX check it makes before committing.
4. Disk: the bytes of the step, the build and the install, and the blocks they
   really take (distinct inodes, st_blocks), with and without hard links; whether
   this filesystem clones (FICLONE).

Usage: python benchmarks/cache_isolation.py [--work DIR] [--layers N] [--precision int4] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
for key, value in {
    "ORT_DISABLE_TELEMETRY": "1",
    "OLIVE_DISABLE_TELEMETRY": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}.items():
    os.environ.setdefault(key, value)


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def allocated(*folders: Path) -> int:
    """Bytes really allocated by the files under ``folders``, each inode counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for folder in folders:
        for path in folder.rglob("*"):
            info = path.lstat()
            if path.is_file() and (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_blocks * 512
    return total


def size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def clones_here(folder: Path) -> bool:
    import fcntl

    from slmk.fsutil import _FICLONE

    source, target = folder / "clone-src", folder / "clone-dst"
    source.write_bytes(b"x" * 4096)
    try:
        with open(source, "rb") as src, open(target, "wb") as dst:
            fcntl.ioctl(dst.fileno(), _FICLONE, src.fileno())
        return True
    except OSError:
        return False
    finally:
        source.unlink(missing_ok=True)
        target.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="working folder (kept; default: a temporary one)")
    parser.add_argument("--layers", type=int, help="decoder layers (default: 24, Qwen2.5-0.5B's)")
    parser.add_argument("--precision", default="int4")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="slmk-cache-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("SLMK_CACHE_DIR", str(work / "slmk-cache"))

    from precision_sweep import make_shaped_model
    from slmk_build.pipeline import cached_step_problems, tree_manifest
    from slmk_foundry.installer import onnx_problems

    from slmk import app
    from slmk.fsutil import copy_tree, link_or_copy_tree

    model = make_shaped_model(work / f"shaped-{args.layers or 24}", layers=args.layers)
    steps = work / "steps-cache"
    shutil.rmtree(steps, ignore_errors=True)
    for folder in ("build", "build-cached", "copy", "links", "foundry"):
        shutil.rmtree(work / folder, ignore_errors=True)

    first_s, result = timed(lambda: app.convert(model, work / "build", precision=args.precision, cache_dir=steps))
    [step] = result.steps
    step_model = Path(step.path) / "model"
    figures: dict[str, object] = {
        "model": str(model),
        "layers": args.layers or 24,
        "precision": args.precision,
        "step_bytes": size(step_model),
        "first_convert_s": round(first_s, 2),
    }
    figures["manifest_s"] = round(timed(lambda: tree_manifest(step_model))[0], 3)
    figures["verify_s"] = round(timed(lambda: cached_step_problems(Path(step.path)))[0], 3)
    figures["copy_s"] = round(timed(lambda: copy_tree(step_model, work / "copy"))[0], 3)
    figures["hard_link_s"] = round(timed(lambda: link_or_copy_tree(step_model, work / "links"))[0], 3)
    cached_s, cached = timed(
        lambda: app.convert(model, work / "build-cached", precision=args.precision, cache_dir=steps)
    )
    assert [s.status for s in cached.steps] == ["cached"], cached.steps
    figures["cached_convert_s"] = round(cached_s, 3)
    install_s, installed = timed(lambda: app.install(work / "build", "bench", cache_dir=work / "foundry"))
    figures["install_s"] = round(install_s, 3)
    figures["onnx_check_s"] = round(timed(lambda: onnx_problems(work / "build"))[0], 4)
    figures["build_bytes"] = size(work / "build")
    figures["install_bytes"] = size(installed.path)
    figures["allocated_step_build_install_bytes"] = allocated(step_model, work / "build", installed.path)
    figures["allocated_step_and_hard_links_bytes"] = allocated(step_model, work / "links")
    figures["filesystem_clones"] = clones_here(work)
    try:
        from slmk_foundry import sdk

        sdk.close()
    except Exception:
        pass

    mb = 1e6
    print(f"model: Qwen2.5-0.5B-shaped, {figures['layers']} layers, {args.precision}; work folder {work}")
    print(f"cached step: {figures['step_bytes'] / mb:.1f} MB")
    print(f"first convert (builder + manifest):   {figures['first_convert_s']:8.2f} s")
    print(f"  manifest (sha256 of every file):     {figures['manifest_s']:8.3f} s")
    print(f"cached convert (verify + copy):        {figures['cached_convert_s']:8.3f} s")
    print(f"  verify the manifest:                 {figures['verify_s']:8.3f} s")
    print(f"  copy the step into a build:          {figures['copy_s']:8.3f} s")
    print(f"  hard links (what the copy replaced): {figures['hard_link_s']:8.3f} s")
    print(f"install (copy, checks, SDK register):  {figures['install_s']:8.3f} s")
    print(f"  whole-ONNX check of the build:       {figures['onnx_check_s']:8.4f} s")
    print(
        f"disk: step + build + install allocate {figures['allocated_step_build_install_bytes'] / mb:.1f} MB "
        f"(hard links: step + build {figures['allocated_step_and_hard_links_bytes'] / mb:.1f} MB); "
        f"reflinks on this filesystem: {'yes' if figures['filesystem_clones'] else 'no'}"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
