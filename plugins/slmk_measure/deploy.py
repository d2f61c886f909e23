"""`slmk deploy`: doctor -> template -> convert (and quantize) -> quality gate ->
validate -> install -> a first answer from the installed model, in one command.

With a quality gate, deploy installs the smallest build that passes it: every candidate
build is made first (each precision the execution provider runs, and the variants in
GATE_VARIANTS: int4 at block 128, at block 64 with the output layer at int8, and with its own
embedding table in float; int8 at block 32),
then they are measured and checked against the gate smallest file first, and the first
that passes is installed. Relative terms (``ppl<=+5%``)
and agreement are measured against the reference: the source model run by
transformers (what the user trained), or with ``reference="fp32"`` the most precise
precision the provider runs (fp32 on CPU), built too. When no build passes,
nothing is installed and the command fails with the table of what was tried.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmk.api import (
    FORMAT_HF,
    PRECISIONS,
    ConvertRequest,
    ExecutionProvider,
    ModelInfo,
    Progress,
    SlmkError,
    UsageError,
)
from slmk.api import operations as app
from slmk.api.files import dir_size
from slmk.api.operations import Registry, get_registry

from .compare import build, builds_root, eval_prompts, measure_build
from .display import nested
from .evalset import EvalItem, default_file, load_eval
from .gate import Gate, parse_gate
from .quality import Measurement
from .reference import SOURCE, choose_reference
from .validate import ValidationLimits, ValidationRequest, run_validate

#: The precision deployed when no quality gate is given.
DEFAULT_PRECISION = "int4"
#: Option that keeps a model's own embedding table in float (an untied one: a tied model's int4/int8
#: embedding reads the output layer's quantized table whatever this says). int4/int8 builds on cpu
#: quantize that table by default.
FLOAT_EMBEDDING_OPTION = {"op_types_to_quantize": "MatMul"}
#: With a quality gate, the builds tried at a precision besides its default one, as (label,
#: quantization settings, converter options). Block 128 stores a quarter of the scales of block 32
#: (a smaller file, coarser steps; int8's default); an int4 model's own embedding table kept in
#: float costs the most bytes where the vocabulary is a large share of the parameters, for exact
#: lookups (docs/benchmarks.md, "Quality per byte": 0.2 % lower perplexity for 1.6x the int4 file).
#: Block 64 with the output layer at int8 spends the bytes block 64 saves on the layer whose
#: rounding costs the most: on real text it is both smaller than the default int4 build and
#: under half its perplexity loss (+0.09 % against +0.21 % of fp32, docs/benchmarks.md), for
#: twice the output layer's bytes read per generated token.
GATE_VARIANTS: dict[str, tuple[tuple[str, dict[str, Any], dict[str, Any]], ...]] = {
    "int4": (
        ("b128", {"block_size": 128}, {}),
        ("b64 lm_head int8", {"block_size": 64}, {"matmul_mixed_precision": "last_matmul:int8"}),
        ("b128 float emb", {"block_size": 128}, FLOAT_EMBEDDING_OPTION),
        ("float emb", {}, FLOAT_EMBEDDING_OPTION),
    ),
    "int8": (("b32", {"block_size": 32}, {}),),  # int8's default block is 128 (larger: finer steps)
}


@dataclass(frozen=True)
class Candidate:
    """A build deploy may install: a precision, and the settings of a variant (none: its default build)."""

    precision: str
    variant: str = ""
    quantization: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.precision} {self.variant}" if self.variant else self.precision

    @property
    def folder_name(self) -> str:
        return self.label.replace(" ", "-")


def weights_bytes(folder: Path) -> int:
    """What orders the candidates: their model files (the rest of a folder, configs and tokenizer, is the same)."""
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.name.endswith((".onnx", ".onnx.data")))


def candidate_builds(precisions: list[str], *, tied: bool) -> list[Candidate]:
    """The default build of each precision and its GATE_VARIANTS (no float-embedding variant for a tied model)."""
    found: list[Candidate] = []
    for precision in precisions:
        for variant, quantization, options in GATE_VARIANTS.get(precision, ()):
            if tied and options == FLOAT_EMBEDDING_OPTION:
                continue
            found.append(Candidate(precision, variant, dict(quantization), dict(options)))
        found.append(Candidate(precision))
    return found


@dataclass
class Attempt:
    precision: str
    ok: bool
    reasons: list[str]
    measurement: Measurement
    reference: bool = False
    build: str = ""  # the candidate's label: the precision, and its variant if any
    quantization: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "build": self.build or self.precision,
            "quantization": self.quantization,
            "options": self.options,
            "ok": self.ok,
            "reasons": self.reasons,
            "reference": self.reference,
            **{k: v for k, v in self.measurement.as_dict().items() if k != "precision"},
        }


@dataclass
class DeployResult:
    model: str
    name: str
    execution_provider: str
    gate: str | None
    reference: str | None = None
    reference_note: str | None = None  # why the default source reference was not used
    source: dict[str, Any] | None = None  # the source model's measurement, when it is the reference
    tried: list[Attempt] = field(default_factory=list)
    candidates: list[dict[str, Any]] = field(default_factory=list)  # every build made: label, size (smallest first)
    chosen: str | None = None  # the chosen build's precision
    chosen_build: str | None = None  # ... and its label (precision and variant)
    build: str | None = None
    template: dict[str, Any] = field(default_factory=dict)
    verification: dict[str, Any] | None = None  # the chosen build's check against its source
    validation: dict[str, Any] | None = None
    installed: dict[str, Any] | None = None
    first_answer: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.installed is not None,
            "model": self.model,
            "name": self.name,
            "execution_provider": self.execution_provider,
            "gate": self.gate,
            "reference": self.reference,
            "reference_note": self.reference_note,
            "source": self.source,
            "tried": [a.as_dict() for a in self.tried],
            "candidates": self.candidates,
            "chosen": self.chosen,
            "chosen_build": self.chosen_build,
            "build": self.build,
            "template": self.template,
            "verification": self.verification,
            "validation": self.validation,
            "installed": self.installed,
            "first_answer": self.first_answer,
        }


class NoPrecisionPasses(SlmkError):
    """Every precision was tried and none met the quality gate; ``result`` holds the table."""

    def __init__(self, message: str, hint: str, result: DeployResult):
        super().__init__(message, hint)
        self.result = result


def required_checks(registry: Registry, ep: ExecutionProvider) -> list[str]:
    """The failed required checks of `slmk doctor` (warnings do not stop a deploy), and the EP's usability."""
    failures = [
        f"{r['name']}: {r['detail']}" + (f" (fix: {r['fix']})" if r["fix"] else "")
        for r in app.run_doctor(registry)
        if r["status"] == "fail"
    ]
    usability = ep.probe()
    if not usability.usable:
        failures.append(f"ep:{ep.name}: {usability.reason}" + (f" (fix: {usability.fix})" if usability.fix else ""))
    return failures


def candidate_precisions(ep: ExecutionProvider) -> list[str]:
    """What the provider both builds and runs, smallest first."""
    return [p for p in PRECISIONS if p in ep.run_precisions and p in ep.build_precisions]


@dataclass(frozen=True)
class DeployRequest:
    """One `slmk deploy`: the fine-tuned ``model`` folder installed as ``name``.

    ``gate`` (a quality gate) or ``precision`` chooses the precision; ``reference`` is what relative
    gate terms compare with ("source" or "fp32"); ``install_cache``/``steps_cache``: the installer's
    and the build step cache's folders; ``eval_file``/``heldout_file``: else the model's ../data files.
    """

    model: Path
    name: str
    gate: str | None = None
    precision: str | None = None
    execution_provider: str = "cpu"
    runtime: str | None = None
    installer: str | None = None
    install_cache: Path | None = None
    steps_cache: Path | None = None
    force: bool = False
    eval_file: Path | None = None
    heldout_file: Path | None = None
    validate_limits: ValidationLimits = field(default_factory=ValidationLimits)
    reference: str | None = None
    verify: bool = True


def deploy(
    request: DeployRequest,
    *,
    tune: Callable[[Path], Any] | None = None,
    progress: Progress | None = None,
    registry: Registry | None = None,
) -> DeployResult:
    """Build, gate, validate, install and ask the installed model once; ``tune(folder)`` tunes the chosen build."""
    registry = registry or get_registry()
    progress = progress or Progress(quiet=True)
    model, name, gate, precision = request.model, request.name, request.gate, request.precision
    inner = nested(progress)
    parsed: Gate | None = parse_gate(gate) if gate else None
    if parsed and precision:
        raise UsageError("--precision and --quality-gate both choose the precision", hint="pass one of them")
    # an adapter folder deploys merged into its base: Foundry Local runs no separate adapters
    info = ModelInfo.load(app.materialize(model, progress=progress, registry=registry))
    if info.format != FORMAT_HF:
        raise UsageError(
            f"{info.path} is not a Hugging Face model folder", hint="deploy takes the fine-tuned model folder"
        )
    model_dir = info.path.resolve()
    ep = app.resolve_ep(registry, request.execution_provider)
    installer = request.installer or registry.default_name("slmk_installers") or "none"
    runtime = request.runtime or registry.default_name("slmk_runtimes") or "none"
    inst = registry.get("slmk_installers", installer)
    result = DeployResult(
        model=str(model_dir), name=name, execution_provider=ep.name, gate=str(parsed) if parsed else None
    )

    # the data beside the folder the user named (an adapter's ../data, not its merged copy's)
    items, heldout = _data(Path(model).resolve(), request.eval_file, request.heldout_file, parsed)
    precisions = candidate_precisions(ep)
    if parsed is None:
        wanted = precision or DEFAULT_PRECISION
        if wanted not in precisions:
            raise UsageError(
                f"{wanted} does not build and run on {ep.name}", hint=f"{ep.name}: {', '.join(precisions)}"
            )
        precisions = [wanted]
    tied = info.config.get("tie_word_embeddings") is True
    candidates = candidate_builds(precisions, tied=tied) if parsed else [Candidate(precisions[0])]
    reference_name = None
    if parsed and parsed.needs_reference:
        reference_name, result.reference_note = choose_reference(request.reference, model_dir)
        if reference_name != SOURCE:
            reference_name = max(precisions, key=PRECISIONS.index)  # its default build's label
        if result.reference_note:
            progress.log(result.reference_note)
    result.reference = reference_name
    # doctor, template, [the candidates' builds], [the reference], a step per candidate, validate, install, answer
    steps = 2 + (parsed is not None) + (reference_name is not None) + len(candidates) + 3 + (tune is not None)
    progress.total_steps = steps

    def open_build(folder: Path):
        return app.open_session(folder, runtime=runtime, execution_provider=ep.name, registry=registry)

    with progress.step("doctor: required checks"):
        failures = required_checks(registry, ep)
        if failures:
            raise SlmkError(
                f"this machine is not ready to deploy: {failures[0]}",
                hint="`slmk doctor` lists every check with its fix",
            )
    with progress.step("template"):
        from slmk.api.templates import resolve_template

        resolved = resolve_template(registry, info)
        result.template = {"source": resolved.source, "family": resolved.family, "notes": list(resolved.notes)}
        inner.log(f"{resolved.source}" + (f" (family {resolved.family})" if resolved.family else ""))
        mismatch = next((n for n in resolved.notes if n.startswith("does not round-trip")), None)
        if mismatch:  # the install would refuse it: say so before building anything
            raise SlmkError(
                f"the prompt template for {model_dir.name} {mismatch}",
                hint=f"`slmk template show {model_dir}` explains; install step by step with --template FILE",
            )

    need = (parsed.metrics | {"answers"} if "agreement" in parsed.metrics else parsed.metrics) if parsed else set()
    measured: dict[str, Measurement] = {}
    folders: dict[str, Path] = {}

    def make(candidate: Candidate) -> Path:
        convert = ConvertRequest(
            Path(model_dir),
            precision=candidate.precision,
            execution_provider=ep.name,
            cache_dir=request.steps_cache,
            progress=inner,
            verify=request.verify,
            verify_prompts=eval_prompts(items),
            quantization=candidate.quantization or {},
            options=candidate.options or {},
        )
        return build(convert, name=candidate.folder_name)

    def measure_candidate(candidate: Candidate, is_reference: bool = False) -> Measurement:
        folder = folders[candidate.label]
        if not need:
            return Measurement(precision=candidate.precision, path=str(folder), size_bytes=dir_size(folder))
        found = measure_build(
            folder,
            candidate.precision,
            open_build,
            need=need,
            items=items,
            heldout=heldout,
            reference=None if is_reference else measured.get(reference_name),
            progress=inner,
        )
        if "ppl" in need and found.ppl is None:
            raise UsageError(
                f"perplexity could not be measured: {'; '.join(found.notes) or 'no score'}",
                hint="drop the ppl term or measure with --runtime ortgenai",
            )
        return found

    if parsed:
        # every candidate is built first: which is smallest shows only once it is on disk
        with progress.step(f"build {len(candidates)} candidates"):
            for candidate in candidates:
                try:
                    folders[candidate.label] = make(candidate)
                except SlmkError as exc:
                    if not candidate.variant:
                        raise
                    inner.log(f"{candidate.label}: not built, left out ({exc.message})")
            built = [c for c in candidates if c.label in folders]
            progress.total_steps -= len(candidates) - len(built)
            candidates = sorted(built, key=lambda c: weights_bytes(folders[c.label]))
            result.candidates = [{"build": c.label, "model_bytes": weights_bytes(folders[c.label])} for c in candidates]
            inner.log("smallest first: " + ", ".join(c.label for c in candidates))
    if reference_name == SOURCE:
        with progress.step("reference: measure the source model (transformers)"):
            measured[SOURCE] = measure_build(
                model_dir, SOURCE, app.open_source_session, need=need, items=items, heldout=heldout, progress=inner
            )
            result.source = measured[SOURCE].as_dict()
    elif reference_name and reference_name == candidates[0].label:
        progress.total_steps -= 1  # measured as the first candidate
    elif reference_name:
        with progress.step(f"reference {reference_name}: measure"):
            reference_build = next(c for c in candidates if c.label == reference_name)
            measured[reference_name] = measure_candidate(reference_build, is_reference=True)
    chosen = None
    for index, candidate in enumerate(candidates):
        label = candidate.label
        with progress.step(f"try {label}: " + ("measure" if parsed else "build")):
            if label not in folders:
                folders[label] = make(candidate)
            if label not in measured:
                measured[label] = measure_candidate(candidate, is_reference=label == reference_name)
            row = measured[label]
            ok, reasons = parsed.check(row, measured.get(reference_name)) if parsed else (True, ["no quality gate"])
            result.tried.append(
                Attempt(
                    candidate.precision,
                    ok,
                    reasons,
                    row,
                    reference=label == reference_name,
                    build=label,
                    quantization=dict(candidate.quantization),
                    options=dict(candidate.options),
                )
            )
            inner.log(f"{label}: {'passes' if ok else 'fails'} ({'; '.join(reasons)})")
        if ok:
            chosen = candidate
            progress.total_steps = progress.total_steps - (len(candidates) - index - 1)
            break
    if chosen is None:
        failed = "; ".join(
            f"{a.build}: {', '.join(r.removeprefix('FAIL: ') for r in a.reasons if r.startswith('FAIL'))}"
            for a in result.tried
        )
        raise NoPrecisionPasses(
            f"no build passes the quality gate {parsed}, nothing was installed: {failed}",
            hint="relax the gate, or improve the model",
            result=result,
        )
    result.chosen, result.chosen_build = chosen.precision, chosen.label
    folder = Path(measured[chosen.label].path)
    result.build = str(folder)
    result.verification = app.build_info(folder).get("verification")

    with progress.step(f"validate the {chosen.label} build"):
        validation = ValidationRequest(
            folder,
            items,
            eval_note="" if items else "no eval file (pass --eval FILE.jsonl)",
            limits=request.validate_limits,
        )
        report = run_validate(lambda: open_build(folder), validation, inner)
        result.validation = report
        if not report["ok"]:
            failed = [c for c in report["checks"] if c["status"] == "fail"]
            more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            raise SlmkError(
                f"validation of the {chosen.label} build failed, nothing was installed: "
                f"{failed[0]['title']}: {failed[0]['evidence']}{more}",
                hint=f"`slmk validate {folder}` shows every check",
            )
    if tune is not None:
        with progress.step(f"tune the {chosen.label} build for this machine"):
            tune(folder)
    with progress.step(f"install {name}"):
        installed = app.install(
            folder,
            name,
            installer=installer,
            cache_dir=request.install_cache,
            force=request.force,
            progress=inner,
            registry=registry,
        )
        result.installed = {
            "ref": installed.ref,
            "name": installed.name,
            "version": installed.version,
            "path": str(installed.path),
            "precision": installed.precision,
            "execution_provider": installed.execution_provider,
            "size_bytes": installed.size_bytes,
        }
    with progress.step(f"first answer from {installed.ref} ({runtime})"):
        result.first_answer = _first_answer(
            installed, runtime, ep, request.install_cache, items, registry, inst, progress=inner
        )
    return result


def _data(model_dir: Path, eval_file, heldout_file, gate: Gate | None) -> tuple[list[EvalItem], str | None]:
    """The eval items and held-out text: given, else the model's ../data files."""
    eval_path = Path(eval_file) if eval_file else default_file(model_dir, "eval.jsonl")
    heldout_path = Path(heldout_file) if heldout_file else default_file(model_dir, "heldout.txt")
    items = load_eval(eval_path) if eval_path else []
    heldout = None
    if heldout_path:
        if not heldout_path.is_file():
            raise UsageError(f"held-out text {heldout_path} not found", hint="pass a plain-text file with --heldout")
        heldout = heldout_path.read_text(encoding="utf-8")
    if gate:
        if "accuracy" in gate.metrics and not any(i.has_answer for i in items):
            raise UsageError(
                "the quality gate has an accuracy term and there is no eval file with answers",
                hint=f"pass --eval FILE.jsonl (none at {model_dir.parent / 'data' / 'eval.jsonl'})",
            )
        if "ppl" in gate.metrics and not heldout:
            raise UsageError(
                "the quality gate has a ppl term and there is no held-out text",
                hint=f"pass --heldout FILE.txt (none at {model_dir.parent / 'data' / 'heldout.txt'})",
            )
        if "agreement" in gate.metrics and not items and not heldout:
            raise UsageError(
                "the quality gate has an agreement term and there are no prompts to compare",
                hint="pass --eval FILE.jsonl or --heldout FILE.txt",
            )
    return items, heldout


def _first_answer(
    installed, runtime: str, ep: ExecutionProvider, install_cache, items, registry, inst, progress: Progress
) -> dict[str, Any]:
    """Load the installed model as a user would and ask it one question; undo the install if that fails."""
    from .driver import Driver, user

    question = list(items[0].messages) if items else user("Hello! Who are you?")
    try:
        session = app.open_session(
            installed.path,
            runtime=runtime,
            execution_provider=ep.name,
            installed=installed,
            cache_dir=install_cache,
            registry=registry,
        )
        try:
            answer, _ = Driver(session, installed.path).ask(question, max_new_tokens=64)
        finally:
            session.close()
        if not answer.strip():
            raise SlmkError(f"the installed {installed.ref} gave an empty answer")
    except SlmkError as exc:
        inst.remove(installed.name, installed.version, install_cache)
        raise SlmkError(
            f"the installed {installed.ref} does not answer through {runtime}: {exc.message}; it was removed again",
            hint=exc.hint,
        ) from exc
    progress.log(f"{question[-1]['content']} -> {answer.strip()}")
    return {
        "question": question[-1]["content"],
        "answer": answer,
        "correct": items[0].answer_ok(answer) if items and items[0].has_answer else None,
    }


__all__ = ["DeployResult", "NoPrecisionPasses", "builds_root", "deploy"]
