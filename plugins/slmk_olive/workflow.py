"""Run an Olive workflow in-process, inside slmk's step folder, and fail loudly.

What Olive 0.13 does on its own, and what this module does about it:
- it writes ``.olive-cache/`` into the working directory and its output where the
  config says: both are pointed into the step's ``work_dir``;
- ``OLIVE_DISABLE_TELEMETRY=1`` is read only *after* the heartbeat is logged, so the
  heartbeat is still written under ``~/.cache/Microsoft`` and the exporter stalls
  the process for about 10 s at exit when offline; Olive skips the heartbeat in CI,
  so the telemetry singleton is created once under ``CI=1``;
- ``olive.workflows.run`` returns normally when a pass fails (the failure is only in
  the footprints) or re-raises the pass's exception: both become a ``StepFailed``
  that names the pass;
- it logs to ``sys.stdout`` and sets ``tempfile.tempdir`` globally: its output goes to
  a log file (quoted on failure) and the temp dir is restored.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import os
import re
import sys
import tempfile
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmk.api import Progress, StepFailed, UsageError
from slmk.api.files import temporary_environ

from .versions import GENAI_DISTRIBUTIONS, installed, model_builder_fix, model_builder_pass_broken

LOG_NAME = "olive.log"
_TAIL_LINES = 3


@dataclass(frozen=True)
class WorkflowResult:
    """Where the workflow's final model is and what kind it is."""

    model_path: Path  # a folder (HF, ORT GenAI) or a file (model.onnx)
    model_type: str  # Olive's handler type, lower case: "hfmodel", "onnxmodel" ...
    passes: tuple[tuple[str, str], ...]  # (name, type) in run order

    @property
    def folder(self) -> Path:
        return self.model_path if self.model_path.is_dir() else self.model_path.parent


def workflow_passes(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(name, type)`` of each pass in the order Olive runs them."""
    passes = []
    for name, value in (config.get("passes") or {}).items():
        entries = value if isinstance(value, list) else [value]
        kind = next((e.get("type") for e in entries if isinstance(e, Mapping) and e.get("type")), "?")
        passes.append((str(name), str(kind)))
    return passes


def redirect_into(config: dict[str, Any], work_dir: Path) -> None:
    """Point the workflow's cache and output into ``work_dir``.

    A workflow file names its own ``cache_dir``/``output_dir`` (often relative to
    where ``olive run`` was started): slmk never writes there.
    """
    engine = config.get("engine") if isinstance(config.get("engine"), dict) else None
    for section in (config, engine or {}):
        for key in ("cache_dir", "cache_config", "output_dir", "enable_shared_cache"):
            section.pop(key, None)
    target = engine if engine is not None else config
    target.update(
        {
            "cache_dir": str(work_dir / "olive-cache"),
            "output_dir": str(work_dir / "olive-output"),
            "enable_shared_cache": False,
        }
    )


def run_workflow(config: Mapping[str, Any], work_dir: Path, progress: Progress, *, what: str) -> WorkflowResult:
    """Run ``config`` with ``olive.workflows.run``; raise ``StepFailed`` naming the failing pass."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(dict(config))
    redirect_into(config, work_dir)
    passes = workflow_passes(config)
    if not passes:
        raise UsageError(f"{what} has no passes", hint='add a pass under "passes" in the workflow file')
    log_path = work_dir / LOG_NAME
    olive_run = _import_olive()
    progress.log(
        f"Olive {installed('olive-ai')}: {what}: passes " + ", ".join(f"{name} ({kind})" for name, kind in passes)
    )
    saved_tempdir = tempfile.tempdir
    try:
        with _output_to(log_path):
            output = olive_run(config, tempdir=str(work_dir / "tmp"))
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        failed = _pass_in_traceback(exc.__traceback__)
        if failed is None:  # raised before any pass ran: the workflow itself is wrong
            raise UsageError(
                f"Olive rejected {what}: {_summary(exc)}",
                hint="fix the workflow file; `olive run --config FILE` shows the same error",
            ) from exc
        # Olive lower-cases pass types; name them as the file does.
        failed = (failed[0], dict(passes).get(failed[0], failed[1]))
        raise _pass_failed(failed, passes, _first_line(exc), log_path, what) from exc
    finally:
        tempfile.tempdir = saved_tempdir
        gc.collect()  # Olive keeps the torch model alive until collected
    if output is None or not output.has_output_model():
        failed = _first_unfinished_pass(passes, getattr(output, "footprint", None))
        raise _pass_failed(failed, passes, "Olive finished without an output model", log_path, what)
    best = output.get_best_candidate()
    model_path = Path(best.model_path) if best and best.model_path else None
    if model_path is None or not model_path.exists():
        raise StepFailed(
            f"Olive reported an output model for {what} but wrote none",
            hint=" | ".join(_tail(log_path)) or "rerun with --debug for the traceback",
        )
    return WorkflowResult(model_path=model_path, model_type=str(best.model_type or "").lower(), passes=tuple(passes))


# ------------------------------------------------------------------ failure reports
def _pass_failed(
    failed: tuple[str, str] | None, passes: list[tuple[str, str]], reason: str, log_path: Path, what: str
) -> StepFailed:
    if failed is None:
        where = "one of the passes " + ", ".join(f"{name!r} ({kind})" for name, kind in passes)
    else:
        where = f"pass {failed[0]!r} ({failed[1]})"
    hint = _known_fix(failed)
    tail = _tail(log_path)
    if not hint:
        hint = ("Olive's log ends: " + " | ".join(tail)) if tail else "rerun with --debug for the traceback"
    return StepFailed(f"Olive {where} failed in {what}: {reason}", hint=hint)


def _known_fix(failed: tuple[str, str] | None) -> str:
    if failed and failed[1].lower() == "modelbuilder":
        olive, genai = installed("olive-ai"), installed(*GENAI_DISTRIBUTIONS)
        if model_builder_pass_broken(olive, genai):
            return model_builder_fix(olive, genai)
    return ""


def _pass_in_traceback(tb) -> tuple[str, str] | None:
    """The pass Olive's engine was running when the exception was raised."""
    found = None
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "_run_pass" and "pass_name" in frame.f_locals:
            kind = frame.f_locals.get("pass_type_name") or "?"
            found = (str(frame.f_locals["pass_name"]), str(kind))
        tb = tb.tb_next
    return found


def _first_unfinished_pass(passes: list[tuple[str, str]], footprint) -> tuple[str, str] | None:
    """Without a search, passes run in order and stop at the first failure: the first
    pass with no successful model in the footprints is the one that failed (or was
    pruned as an invalid configuration, which leaves no footprint at all)."""
    if footprint is None or not getattr(footprint, "nodes", None):
        return passes[0] if passes else None
    model_id = footprint.input_model_id
    nodes = list(footprint.nodes.values())
    for name, kind in passes:
        child = next(
            (n for n in nodes if n.parent_model_id == model_id and str(n.from_pass or "").lower() == kind.lower()), None
        )
        if child is None or (child.model_config_data or {}).get("is_pruned"):
            return name, kind
        model_id = child.model_id
    return None


def _summary(exc: BaseException) -> str:
    """pydantic lists every invalid field; other errors give their first line."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            found = [f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', '')}" for e in errors()[:4]]
        except Exception:  # not a pydantic error after all
            found = []
        if found:
            return "; ".join(found)
    return _first_line(exc)


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_OLIVE_PREFIX = re.compile(r"^\[[^\]]*\] \[(?P<level>[A-Z]+)\] \[[^\]]*\] ")


def _tail(log_path: Path, lines: int = _TAIL_LINES) -> list[str]:
    """The last warnings and errors in Olive's log, without its timestamp prefix."""
    try:
        with open(log_path, encoding="utf-8", errors="replace") as handle:
            kept = deque((line.rstrip("\n").split("\r")[-1].strip() for line in handle), maxlen=400)
    except OSError:
        return []
    problems = []
    for line in kept:
        match = _OLIVE_PREFIX.match(line)
        if match and match["level"] in ("WARNING", "ERROR", "CRITICAL"):
            problems.append(line[match.end() :])
    return problems[-lines:]


# ------------------------------------------------------------------ Olive in-process
def _import_olive():
    _quiet_telemetry()
    try:
        from olive.workflows import run
    except ImportError as exc:
        module = (getattr(exc, "name", None) or "olive").split(".")[0]
        requirement = {"olive": "olive-ai==0.13.0", "requests": "requests"}.get(module, module)
        raise StepFailed(
            f"Olive cannot be imported: {_first_line(exc)}",
            hint=f"pip install '{requirement}' (or pip install 'slmk[olive]')",
        ) from exc
    return run


def _quiet_telemetry() -> None:
    """Create Olive's telemetry singleton with the heartbeat skipped, unless the user
    opted in with OLIVE_DISABLE_TELEMETRY=0 (slmk keeps telemetry off by default)."""
    if os.environ.get("OLIVE_DISABLE_TELEMETRY", "1") != "1":
        return
    os.environ["OLIVE_DISABLE_TELEMETRY"] = "1"
    try:
        with temporary_environ({"CI": "1"}):
            from olive.telemetry.telemetry import Telemetry

            Telemetry()
    except ImportError:
        pass  # reported by _import_olive


@contextlib.contextmanager
def _output_to(log_path: Path) -> Iterator[None]:
    """Send Olive's logging, print, tqdm and native output to ``log_path``.

    Descriptors 1 and 2 are redirected; ``sys.stdout``/``sys.stderr`` themselves are
    not swapped, because handlers created during the run (transformers', Olive's
    onnxruntime handler) would keep the log file after it is closed. Olive's own
    handlers hold the stdout of import time, so their streams are swapped and
    restored. The handler Olive adds to the ``onnxruntime`` logger on every run, and
    the root handler ``onnxruntime.quantization`` installs with ``basicConfig`` when a
    pass imports it, are removed again.
    """
    log = open(log_path, "a", encoding="utf-8", errors="replace", buffering=1)
    olive_logger, ort_logger, root = logging.getLogger("olive"), logging.getLogger("onnxruntime"), logging.getLogger()
    saved_loggers = [(logger, logger.handlers[:], logger.level) for logger in (ort_logger, root)]
    swapped = [(h, h.stream) for h in olive_logger.handlers if type(h) is logging.StreamHandler]
    for handler, _ in swapped:
        handler.setStream(log)
    _flush_std()
    saved_fds: list[tuple[int, int]] = []
    try:
        for fd in (1, 2):
            try:
                saved_fds.append((fd, os.dup(fd)))
                os.dup2(log.fileno(), fd)
            except OSError:
                pass  # no such descriptor (a detached process)
        yield
    finally:
        _flush_std()
        for fd, duplicate in saved_fds:
            os.dup2(duplicate, fd)
            os.close(duplicate)
        for handler, stream in swapped:
            handler.setStream(stream)
        for logger, handlers, level in saved_loggers:
            logger.handlers, logger.level = handlers, level
        log.close()


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
