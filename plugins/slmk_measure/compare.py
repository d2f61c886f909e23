"""`slmk compare`: build a model at several precisions and put them side by side:
size on disk, decode speed, perplexity on held-out text, greedy agreement with the
reference, domain accuracy; then recommend the smallest that is good enough.

The reference is the source model run by transformers (what the user trained) unless
``--reference fp32`` asks for the most precise ONNX build; either way every build is a row."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from slmk.api import PRECISIONS, ConvertRequest, ExecutionProvider, Progress, UsageError
from slmk.api.operations import build_info, open_source_session

from .driver import Driver
from .evalset import EvalItem
from .gate import Gate, parse_gate
from .quality import Measurement, Workload, agreement_prompts, measure
from .reference import SOURCE, rank

#: The quality a smaller precision must keep to be recommended, unless told otherwise.
DEFAULT_TOLERANCE = "ppl<=+5%,accuracy>=-5%"
ALL_METRICS = {"ppl", "accuracy", "agreement", "answers", "decode_tps"}


def reference_precision(precisions: Sequence[str]) -> str:
    """The most precise of ``precisions`` (fp32 where present): what the others are compared with."""
    return max(precisions, key=PRECISIONS.index)


def check_precisions(precisions: Sequence[str], ep: ExecutionProvider) -> list[str]:
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise UsageError(f"unknown precision {unknown[0]!r}", hint=f"precisions: {', '.join(PRECISIONS)}")
    for precision in precisions:
        if precision not in ep.run_precisions:
            raise UsageError(
                f"{precision} builds do not run on {ep.name}", hint=f"{ep.name} runs {', '.join(ep.run_precisions)}"
            )
    if not precisions:
        raise UsageError("no precisions given", hint="e.g. --precisions fp32,int8,int4")
    return list(dict.fromkeys(precisions))


def builds_root(model: Path, ep_name: str, cache_dir: Path | None = None) -> Path:
    """Where compare and deploy keep their builds of ``model`` (hard links into the step cache)."""
    from slmk.api.files import cache_root, hash_json

    root = Path(cache_dir) if cache_dir else cache_root()
    key = hash_json({"model": str(Path(model).resolve())})[:10]
    return root / "measure-builds" / f"{Path(model).resolve().name}-{key}-{ep_name}"


def build(request: ConvertRequest, name: str | None = None) -> Path:
    """Build ``request.model`` at its precision (the step cache makes a rebuild a copy of links)
    into its folder under builds_root, ``name`` (default: the precision); the request's
    output and force are set here."""
    from slmk.api import operations as app

    out = builds_root(request.model, request.execution_provider, request.cache_dir) / (name or request.precision)
    progress = request.progress
    # convert numbers its own steps: a fresh Progress on the same stream for each build
    steps = Progress(quiet=progress.quiet, stream=progress.stream) if progress else Progress(quiet=True)
    app.convert_request(replace(request, output=out, force=True, progress=steps))
    return out


def eval_prompts(items: Sequence[EvalItem]) -> list[list[dict[str, str]]] | None:
    """The eval set's conversations, which builds are checked against the source with (None: slmk's own)."""
    return [list(item.messages) for item in items] or None


def measure_build(
    folder: Path,
    precision: str,
    open_session: Callable[[Path], Any],
    *,
    need: set[str],
    items: Sequence[EvalItem] = (),
    heldout: str | None = None,
    reference: Measurement | None = None,
    progress: Progress | None = None,
) -> Measurement:
    session = open_session(folder)
    try:
        driver = Driver(session, folder)
        prompts = agreement_prompts(items, heldout) if need & {"agreement", "answers"} else None
        workload = Workload(need, items, heldout, prompts)
        return measure(driver, precision, folder, workload, reference=reference, progress=progress)
    finally:
        session.close()


def relative_figures(row: Measurement, reference: Measurement) -> dict[str, Any]:
    def ratio(a, b):
        return round(a / b, 4) if a is not None and b else None

    return {
        "size_ratio": ratio(row.size_bytes, reference.size_bytes),
        "decode_ratio": ratio(row.decode_tps, reference.decode_tps),
        "ppl_change_pct": round(100 * (row.ppl / reference.ppl - 1), 3) if row.ppl and reference.ppl else None,
    }


def recommend(rows: dict[str, Measurement], reference: Measurement, gate: Gate) -> dict[str, Any]:
    """The smallest precision that meets ``gate`` (reference terms measured against ``reference``)."""
    verdicts = {}
    for precision in sorted((p for p in rows if p != SOURCE), key=PRECISIONS.index):
        verdicts[precision] = gate.check(rows[precision], reference)
    chosen = next((p for p, (ok, _) in verdicts.items() if ok), None)
    if chosen is None:
        why = "no precision meets the tolerance " + str(gate)
    else:
        smaller = [p for p in verdicts if PRECISIONS.index(p) < PRECISIONS.index(chosen)]
        why = f"{chosen} is the smallest precision within {gate}"
        if smaller:
            why += "; " + "; ".join(
                f"{p}: {', '.join(r for r in verdicts[p][1] if r.startswith('FAIL'))}" for p in smaller
            )
    return {
        "precision": chosen,
        "tolerance": str(gate),
        "why": why,
        "verdicts": {p: {"ok": ok, "reasons": reasons} for p, (ok, reasons) in verdicts.items()},
    }


@dataclass(frozen=True)
class CompareRequest:
    """One `slmk compare`: ``model`` built at each of ``precisions`` and measured on the eval ``items``
    and ``heldout`` text; ``tolerance`` (a gate) picks the recommendation; ``reference`` is the source
    model (transformers) or fp32 (the most precise build); ``cache_dir`` the step cache."""

    model: Path
    precisions: Sequence[str]
    items: Sequence[EvalItem] = ()
    heldout: str | None = None
    tolerance: str | None = None
    cache_dir: Path | None = None
    reference: str = SOURCE
    verify: bool = True


def run_compare(
    request: CompareRequest,
    ep: ExecutionProvider,
    open_session: Callable[[Path], Any],
    *,
    progress: Progress | None = None,
    sub_progress: Progress | None = None,
    open_source: Callable[[Path], Any] | None = None,
) -> dict[str, Any]:
    """Measure the source model (``request.reference`` source; ``open_source`` loads it) and a build per
    precision. With reference fp32 the most precise build is the reference instead.
    """
    model, items, heldout, cache_dir = request.model, request.items, request.heldout, request.cache_dir
    progress = progress or Progress(quiet=True)
    open_source = open_source or open_source_session
    gate = parse_gate(request.tolerance or DEFAULT_TOLERANCE)
    precisions = check_precisions(request.precisions, ep)
    reference_name = SOURCE if request.reference == SOURCE else reference_precision(precisions)
    order = [reference_name] + [p for p in precisions if p != reference_name]
    progress.total_steps = 2 * len(precisions) + (reference_name == SOURCE)
    rows: dict[str, Measurement] = {}
    verifications: dict[str, Any] = {}
    if reference_name == SOURCE:
        with progress.step("measure the source model (transformers)"):
            rows[SOURCE] = measure_build(
                model, SOURCE, open_source, need=ALL_METRICS, items=items, heldout=heldout, progress=sub_progress
            )
        order.remove(SOURCE)
    for precision in order:
        with progress.step(f"build {precision}"):
            folder = build(
                ConvertRequest(
                    Path(model),
                    precision=precision,
                    execution_provider=ep.name,
                    cache_dir=cache_dir,
                    progress=sub_progress,
                    verify=request.verify,
                    verify_prompts=eval_prompts(items),
                )
            )
            verifications[precision] = build_info(folder).get("verification")
        with progress.step(f"measure {precision}"):
            rows[precision] = measure_build(
                folder,
                precision,
                open_session,
                need=ALL_METRICS,
                items=items,
                heldout=heldout,
                reference=rows.get(reference_name),
                progress=sub_progress,
            )
    reference = rows[reference_name]
    table = []
    for precision in sorted(rows, key=rank, reverse=True):
        row = rows[precision]
        figures = {**row.as_dict(), **relative_figures(row, reference), "reference": precision == reference_name}
        if precision != SOURCE:
            figures["verification"] = verifications.get(precision)
        table.append(figures)
    return {
        "model": str(model),
        "execution_provider": ep.name,
        "reference": reference_name,
        "precisions": table,
        "recommendation": recommend(rows, reference, gate),
    }
