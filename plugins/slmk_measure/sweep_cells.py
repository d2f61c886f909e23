"""What one sweep cell does, as top-level functions on plain data (executors ship them).

This is the one module of the sweep that reaches into the measurement code
(``slmk.measure`` today, the ``slmk_measure`` plugin after the move): when that code
moves, only the imports here change.

A cell is two tasks. ``build_cell`` converts through the step cache (a shared
``cache_dir`` on a cluster: atomic steps under a lock, so two nodes building the same
step build it once). ``measure_cell`` loads the build and measures it the way
``slmk compare`` does (size, perplexity, domain accuracy, greedy answers for the
agreement, decode speed), plus a short ``slmk bench`` and, where asked, ``slmk validate``.
Both return plain dicts; an error is returned as ``{"error": "one line"}`` so that it
crosses process and node boundaries intact and never looks like a lost worker.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

#: While the file this variable names exists, cell tasks wait at their start. A test
#: seam: it holds tasks on one node (set in that node's environment only) so the test
#: can kill the node while a task is surely running there.
HOLD_ENV = "SLMK_SWEEP_HOLD_FILE"
#: Tasks note their start here (cell id, node, pid), so a driver or test sees what runs where.
STARTED_DIR = "started"
#: The record slmk convert writes beside a build (not part of the model).
BUILD_RECORD = "slmk_build.json"


def _error(exc: BaseException) -> dict[str, Any]:
    from slmk.api import SlmkError

    text = exc.one_line() if isinstance(exc, SlmkError) else f"{type(exc).__name__}: {exc}"
    return {"error": " ".join(text.split())}


def _note_start(spec: dict[str, Any], phase: str) -> None:
    marks = spec.get("marks_dir")
    if marks:
        folder = Path(marks) / STARTED_DIR
        folder.mkdir(parents=True, exist_ok=True)
        record = {"cell": spec["id"], "phase": phase, "node": os.environ.get("SLMK_NODE_NAME"), "pid": os.getpid()}
        (folder / f"{spec['id']}-{phase}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json").write_text(json.dumps(record))
    hold = os.environ.get(HOLD_ENV)
    while hold and Path(hold).exists():
        time.sleep(0.2)


def build_cell(spec: dict[str, Any]) -> dict[str, Any]:
    """Convert ``spec["model"]`` at the cell's precision for its EP into ``spec["build_dir"]``."""
    from slmk.api.operations import convert

    _note_start(spec, "build")
    try:
        result = convert(
            spec["model"],
            spec["build_dir"],
            precision=spec["precision"],
            execution_provider=spec["execution_provider"],
            quantization=dict(spec.get("quantization") or {}),
            force=True,
            cache_dir=spec.get("cache_dir"),
        )
    except Exception as exc:
        return _error(exc)
    return {
        "build": str(result.output),
        # the model's files: slmk_build.json records timings and cache hits, which differ per run
        "size_bytes": sum(size for name, size in result.files.items() if name != BUILD_RECORD),
        "build_seconds": round(result.seconds, 3),
        "steps": [{"kind": s.kind, "tool": s.tool, "status": s.status, "seconds": s.seconds} for s in result.steps],
        "verification": result.verification,  # the build against its source model (transformers)
    }


def _open(spec: dict[str, Any]):
    from slmk.api.operations import open_session

    def open_build(path=None):
        return open_session(
            path or spec["build_dir"],
            runtime=spec.get("runtime") or "ortgenai",
            execution_provider=spec["execution_provider"],
        )

    return open_build


def measure_cell(spec: dict[str, Any], build: str) -> dict[str, Any]:
    """Measure a build: compare's figures, a short bench, and validation when asked."""
    _note_start(spec, "measure")
    try:
        return _measure(spec, Path(build))
    except Exception as exc:
        return _error(exc)


def _measure(spec: dict[str, Any], folder: Path) -> dict[str, Any]:
    from .bench import run_bench
    from .compare import measure_build
    from .driver import Driver
    from .evalset import load_eval
    from .resources import rss_bytes
    from .validate import ValidationLimits, ValidationRequest, run_validate

    open_build = _open(spec)
    items = load_eval(spec["eval_file"]) if spec.get("eval_file") else []
    heldout = Path(spec["heldout_file"]).read_text(encoding="utf-8") if spec.get("heldout_file") else None
    start = time.perf_counter()
    measured = measure_build(
        folder,
        spec["precision"],
        open_build,
        need={"ppl", "accuracy", "answers", "decode_tps"},
        items=items,
        heldout=heldout,
    )
    row: dict[str, Any] = {
        key: value
        for key, value in measured.as_dict().items()
        if key in ("ppl", "ppl_tokens", "accuracy", "correct", "items", "decode_tps", "time_to_first_token_s", "notes")
    }
    # agreement needs the reference precision's answers, measured in another cell: the
    # sweep compares the token ids once both are in
    session = open_build(folder)
    try:
        driver = Driver(session, folder)
        row["answer_tokens"] = [driver.tokens(a) if driver.can_encode else list(a) for a in measured.answers]
        bench_options = spec.get("bench") or {}
        baseline = rss_bytes()
        bench = run_bench(
            driver,
            lengths=bench_options.get("lengths") or [16, 64],
            repeats=int(bench_options.get("repeats", 2)),
            new_tokens=int(bench_options.get("new_tokens", 16)),
            baseline_rss=baseline,
        )
    finally:
        session.close()
    longest = bench["lengths"][-1]
    row.update(
        {
            "prompt_tps": longest["prompt_tokens_per_s"]["median"],
            "bench_decode_tps": longest["decode_tokens_per_s"]["median"],
            "peak_rss_bytes": bench["peak_rss_bytes"],
            "model_rss_bytes": bench["model_rss_bytes"],
        }
    )
    validate = spec.get("validate")
    if validate is not None:
        request = ValidationRequest(folder, items, search={"do_sample": False}, limits=ValidationLimits(**validate))
        report = run_validate(lambda: open_build(folder), request)
        row["validation_ok"] = report["ok"]
        row["validation"] = {
            "counts": report["counts"],
            "failed": [c["title"] for c in report["checks"] if c["status"] == "fail"],
        }
    row["measure_seconds"] = round(time.perf_counter() - start, 3)
    return row


# ------------------------------------------------------------------ in the driver
def agreement(answers: list[list[Any]], reference: list[list[Any]]) -> tuple[float, float]:
    """(token agreement, exact agreement) of answer token lists, exactly as compare computes it."""
    from .quality import agreement as token_agreement

    class _Tokens:  # the lists are token ids already: compare them as they are
        can_encode = False

    return token_agreement(_Tokens(), answers, reference)


def choose(rows: list[dict[str, Any]], gate_text: str, source: dict[str, Any] | None = None) -> dict[str, Any]:
    """The cell a quality gate picks among one model's rows on one EP (smallest precision
    that passes, then smallest size), with every row's verdict. Relative terms are judged
    against ``source`` (the source model's measurement) when given, else the most precise cell."""
    from slmk.api import PRECISIONS

    from .compare import reference_precision
    from .gate import parse_gate
    from .quality import Measurement

    gate = parse_gate(gate_text)

    def as_measurement(row):
        return Measurement(
            precision=row["precision"],
            size_bytes=row.get("size_bytes") or 0,
            ppl=row.get("ppl"),
            accuracy=row.get("accuracy"),
            agreement=row.get("agreement"),
            decode_tps=row.get("decode_tps"),
        )

    measured = [r for r in rows if not r.get("error")]
    if not measured:
        return {"cell": None, "precision": None, "why": "no cell was measured", "verdicts": {}}
    if source is not None:
        reference_name, reference = "source", as_measurement(source)
    else:
        reference_name = reference_precision([r["precision"] for r in measured])
        reference = as_measurement(next(r for r in measured if r["precision"] == reference_name))
    verdicts = {}
    for row in measured:
        ok, reasons = gate.check(as_measurement(row), reference)
        verdicts[row["cell"]] = {"ok": ok, "reasons": reasons}
    passing = sorted(
        (r for r in measured if verdicts[r["cell"]]["ok"]),
        key=lambda r: (PRECISIONS.index(r["precision"]), r.get("size_bytes") or 0),
    )
    if not passing:
        return {"cell": None, "precision": None, "why": f"no cell meets {gate}", "verdicts": verdicts}
    best = passing[0]
    return {
        "cell": best["cell"],
        "precision": best["precision"],
        "quantizer": best.get("quantizer"),
        "build": best.get("build"),
        "why": f"{best['precision']} ({best.get('quantizer')}) is the smallest cell within {gate} "
        f"(reference {reference_name})",
        "verdicts": verdicts,
    }


def check_gate(text: str) -> None:
    from .gate import parse_gate

    parse_gate(text)


def model_data_file(model: Path, name: str) -> Path | None:
    """The model's ../data/NAME (eval.jsonl, heldout.txt) where there is one."""
    from .evalset import default_file

    return default_file(model, name)
