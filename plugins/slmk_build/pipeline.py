"""Run a plan: each step cached by a hash of its inputs, options and tool versions.

A step writes into a temporary folder in the cache and is renamed into place when it
finishes, so a completed step is reused by any later run with the same inputs (an
identical rerun does no work) and an interrupted run resumes at the first step that
had not finished. The final output is assembled beside its destination and renamed.

Isolation: a finished step's files are made read-only and its ``step.json`` records
the size and sha256 of each; a step is reused only when its files still match
(otherwise it is rebuilt, and the log says why). The build receives copies
(reflinks where the filesystem has them), never hard links, so editing a build's
genai_config.json or damaging its weights changes neither the cache nor an install.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmk.api import (
    BuildResult,
    ConvertRequest,
    ExecutionProvider,
    ModelInfo,
    Plan,
    PlannedStep,
    Progress,
    SlmkError,
    StepFailed,
    StepRequest,
    StepRun,
    UsageError,
    __version__,
)
from slmk.api.files import (
    atomic_dir,
    cache_root,
    check_cache_folder,
    clean_stale_tmp,
    copy_tree,
    file_lock,
    fingerprint_tree,
    hash_json,
    tree_entries,
    write_json_atomic,
)
from slmk.api.models import BUILD_INFO, write_search
from slmk.api.testing import pause_point

if TYPE_CHECKING:
    from slmk.api.operations import Registry

STEP_MARKER = "step.json"
#: A step's format: entries written by an older slmk carry no manifest and are rebuilt.
STEP_FORMAT = 2
#: How long a build waits for another process building the same step (SLMK_LOCK_TIMEOUT_S overrides).
STEP_LOCK_TIMEOUT_S = 6 * 3600.0


def _tool_versions(registry: Registry, step: PlannedStep) -> dict[str, str]:
    hook = "slmk_converters" if step.kind == "convert" else "slmk_quantizers"
    record = registry.records(hook)[step.tool]
    try:
        return dict(record.tool_versions())
    except Exception as exc:  # a broken version probe must not break the build
        return {"error": str(exc)}


def step_key(
    registry: Registry,
    step: PlannedStep,
    input_fingerprint: str,
    ep: ExecutionProvider,
    calibration_fingerprint: str | None,
    trust_remote_code: bool = False,
) -> str:
    """Everything that changes a step's result: tool, versions, precision, EP, options, input, remote code."""
    return hash_json(
        {
            "slmk": __version__,
            "format": STEP_FORMAT,
            "trust_remote_code": bool(trust_remote_code),
            "kind": step.kind,
            "tool": step.tool,
            "versions": _tool_versions(registry, step),
            "precision": step.precision,
            "ep": ep.name,
            "options": step.options,
            "input": input_fingerprint,
            "calibration": calibration_fingerprint,
        }
    )[:24]


def _file_fingerprint(path: Path) -> str:
    stat = path.stat()
    return hash_json({"name": path.name, "size": stat.st_size, "mtime": stat.st_mtime_ns})


@dataclass(frozen=True)
class _BuildContext:
    """What every step of one build shares."""

    registry: Registry
    ep: ExecutionProvider
    root: Path  # the step cache
    progress: Progress
    calibration: Path | None
    trust_remote_code: bool


def run_plan(
    registry: Registry, info: ModelInfo, plan: Plan, request: ConvertRequest, check: Any = None
) -> BuildResult:
    """Run ``plan`` on ``info``'s folder into ``request.output``: each step cached, the output written
    atomically. The request also gives force, progress, calibration, trust_remote_code, search
    (written to genai_config.json) and cache_dir; the plan names the execution provider.

    ``check`` (what a ``BuildCheck`` record's ``start`` returned): ``check.before(final_key)`` runs
    ahead of the first step, ``check.after(folder)`` on the finished build before it is renamed into
    place; what it returns
    is recorded as ``verification`` in slmk_build.json, and when it raises nothing is kept.
    """
    force, calibration, trust_remote_code = request.force, request.calibration, request.trust_remote_code
    ep = registry.get("slmk_execution_providers", plan.execution_provider)
    progress = request.progress or Progress(quiet=True)
    if request.output is None:
        raise UsageError("no output folder given", hint="pass -o OUTPUT")
    output = Path(request.output).expanduser().resolve()
    if output.exists() and not force:
        raise UsageError(
            f"output {output} already exists", hint="choose another -o folder or pass --force to replace it"
        )
    root = Path(request.cache_dir) if request.cache_dir else cache_root()
    check_cache_folder(root, "the step cache (SLMK_CACHE_DIR)")
    steps_dir = root / "steps"
    steps_dir.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(steps_dir)
    clean_stale_tmp(output.parent)
    start = time.perf_counter()
    result = BuildResult(output=output, plan=plan)
    source = info.path.resolve()
    fingerprint = fingerprint_tree(source)
    calibration_fp = _file_fingerprint(calibration) if calibration else None
    progress.total_steps = len(plan.steps) + 1
    context = _BuildContext(registry, ep, root, progress, calibration, trust_remote_code)
    keys = []
    for step in plan.steps:  # each key holds the one before it: the last names the whole build
        keys.append(step_key(registry, step, keys[-1] if keys else fingerprint, ep, calibration_fp, trust_remote_code))
    if check is not None:
        check.before(keys[-1] if keys else fingerprint)
    for step, key in zip(plan.steps, keys):
        step_dir = steps_dir / f"{key}-{step.kind}-{step.tool}"
        title = step.describe()
        lock = file_lock(
            root / "locks" / f"{key}.lock", what=f"step {step.tool}", default_timeout_s=STEP_LOCK_TIMEOUT_S
        )
        with progress.step(title), lock:
            step_start = time.perf_counter()
            damage = cached_step_problems(step_dir)
            if not damage:
                progress.log(f"cached: {step_dir} (verified)")
                status = "cached"
            else:
                if step_dir.exists():
                    progress.log(f"not reusing {step_dir}: {'; '.join(damage[:3])}; building it again")
                shutil.rmtree(step_dir, ignore_errors=True)
                _run_step(context, step, source, step_dir, key)
                status = "ran"
        result.steps.append(
            StepRun(
                step.kind,
                step.tool,
                step.precision,
                status,
                round(time.perf_counter() - step_start, 3),
                key,
                str(step_dir),
            )
        )
        source = step_dir / "model"
    with progress.step(f"write {output}"), atomic_dir(output, force=force) as tmp:
        copy_tree(source, tmp)  # copies: editing the build never reaches the cache
        write_search(tmp, dict(request.search))
        write_json_atomic(
            tmp / BUILD_INFO,
            {
                "slmk_version": __version__,
                "source": str(info.path.resolve()),
                "model_type": info.model_type,
                "architectures": list(info.architectures),
                "precision": plan.precision,
                "execution_provider": ep.name,
                "plan": plan.as_dict(),
                "steps": [asdict(s) for s in result.steps],
                **({"verification": check.after(tmp)} if check is not None else {}),
            },
        )
    result.files = {
        p.relative_to(output).as_posix(): p.stat().st_size for p in sorted(output.rglob("*")) if p.is_file()
    }
    result.seconds = time.perf_counter() - start
    return result


def cached_step_problems(step_dir: Path) -> list[str]:
    """Why the cached step in ``step_dir`` cannot be reused (empty: it is whole and unchanged)."""
    marker = step_dir / STEP_MARKER
    if not marker.is_file():
        return ["not finished"]
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return [f"{STEP_MARKER} is unreadable"]
    if not isinstance(data, dict) or data.get("format") != STEP_FORMAT or not isinstance(data.get("files"), dict):
        return [f"written by another slmk version (no file manifest in {STEP_MARKER})"]
    damaged = [
        name
        for name, entry in data["files"].items()
        if not isinstance(entry, dict)
        or not isinstance(entry.get("size"), int)
        or isinstance(entry.get("size"), bool)
        or not isinstance(entry.get("sha256"), str)
    ]
    if damaged:  # a hand-edited or corrupted step.json: the step is rebuilt like any damaged one
        return [f"{STEP_MARKER} has a damaged entry for {damaged[0]!r}"]
    return manifest_problems(step_dir / "model", data["files"])


#: numpy's ``ndarray.tofile`` (which the model builder's tensor writer uses) reports a short write
#: as a bare OSError without an errno; on a regular file, a write cut short is a full disk.
SHORT_WRITE = re.compile(r"(\d+) requested and (\d+) written")


def _out_of_space(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        if isinstance(exc, OSError) and exc.errno is None:
            short = SHORT_WRITE.fullmatch(str(exc))
            if short and int(short[2]) < int(short[1]):
                return True
        exc = exc.__cause__ or exc.__context__
    return False


def _run_step(context: _BuildContext, step: PlannedStep, source: Path, step_dir: Path, key: str) -> None:
    registry, root = context.registry, context.root
    work_dir = root / "work" / key
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_dir(step_dir) as tmp:
            model_dir = tmp / "model"
            model_dir.mkdir()
            request = StepRequest(
                source=source,
                output=model_dir,
                precision=step.precision,
                execution_provider=context.ep,
                options=step.options,
                work_dir=work_dir,
                progress=context.progress,
                calibration=context.calibration,
                trust_remote_code=context.trust_remote_code,
            )
            if step.kind == "convert":
                registry.converters[step.tool].convert(request)
            else:
                registry.quantizers[step.tool].quantize(request)
            pause_point(f"step-written:{step.kind}")  # output in the temporary folder, not yet committed
            if not any(model_dir.iterdir()):
                raise StepFailed(
                    f"{step.tool} finished but wrote nothing", hint="a plugin bug: report it to its author"
                )
            manifest = tree_manifest(model_dir)
            protect_tree(model_dir)
            marker = {
                "format": STEP_FORMAT,
                "step": asdict(step),
                "size": sum(int(f["size"]) for f in manifest.values()),
                "files": manifest,
            }
            (tmp / STEP_MARKER).write_text(json.dumps(marker, indent=2))
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        if _out_of_space(exc):  # a tool's own wording of a full disk runs long: say it plainly
            raise StepFailed(
                f"no space left on the device during {step.kind} with {step.tool} (step cache: {root})",
                hint="free some disk space, or set SLMK_CACHE_DIR to a larger disk, and retry; "
                "nothing half-written was kept",
            ) from exc
        if isinstance(exc, SlmkError):
            raise
        raise StepFailed(
            f"{step.kind} with {step.tool} failed: {type(exc).__name__}: {exc}",
            hint="rerun with --debug for the traceback",
        ) from exc
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


# ------------------------------------------------------------------ manifests of read-only cache entries
def file_sha256(path: Path) -> str:
    """sha256 of a file's content, read in 1 MiB blocks (hashlib.file_digest is 3.11+)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_manifest(folder: Path) -> dict[str, dict[str, object]]:
    """Size and sha256 of every file under ``folder``, by relative path."""
    folder = Path(folder)
    return {
        rel.as_posix(): {"size": source.stat().st_size, "sha256": file_sha256(source)}
        for rel, source in tree_entries(folder)
        if source is not None
    }


def manifest_problems(folder: Path, manifest: dict[str, dict[str, object]]) -> list[str]:
    """How ``folder`` differs from ``manifest`` (empty when every file is whole and unchanged).

    Sizes first (cheap, catches truncation), then every file's sha256 (catches edits in place).
    """
    folder = Path(folder)
    try:
        present = {rel.as_posix(): source for rel, source in tree_entries(folder) if source is not None}
    except (OSError, UsageError) as exc:
        return [str(exc)]
    problems = [f"{name} is missing" for name in sorted(set(manifest) - set(present))]
    problems += [f"{name} was added" for name in sorted(set(present) - set(manifest))]
    for name in sorted(set(manifest) & set(present)):
        expected = manifest[name]
        size = present[name].stat().st_size
        if size != expected.get("size"):
            problems.append(f"{name} is {size} bytes, not {expected.get('size')}")
        elif file_sha256(present[name]) != expected.get("sha256"):
            problems.append(f"{name} was changed")
    return problems


def protect_tree(folder: Path) -> None:
    """Make every file under ``folder`` read-only (folders stay writable, so it can be deleted)."""
    for rel, source in tree_entries(folder):
        if source is not None and not os.path.islink(Path(folder) / rel):
            mode = stat.S_IMODE(os.stat(source).st_mode)
            os.chmod(source, mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
