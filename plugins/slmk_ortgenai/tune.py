"""slmk tune: measure a build's runtime settings on this machine and keep the fastest.

What is tried, in order (a coordinate search: each stage starts from the best so far):

1. intra-op threads (ONNX Runtime's ``intra_op_num_threads``), 1 .. the logical cores,
   on the build as it is: a genai_config.json change, no rebuild;
2. with ``rebuild_options``, options that need the model builder again (from the source
   folder recorded in slmk_build.json): the int4/int8 ``block_size`` (32, 64, 128),
   ``accuracy_level`` (4: int8 compute, 1: fp32 compute), the output layer at int8
   (``matmul_mixed_precision=last_matmul:int8``), for an int4/int8 build of a model with its own
   embedding table (quantized by default) that table kept in float (``op_types_to_quantize=MatMul``),
   for a model that ties its embedding to its output layer the embedding as its own float table
   (``shared_embeddings=false``; by default it reads the output layer's int4/int8 table). A
   rebuild is kept only if it passes the quality gate the caller gives (``slmk compare``'s checks).

Each candidate is measured the same way, interleaved over ``rounds`` (every round loads
and times every candidate once, so the shared machine's drift spreads over all of them):
one greedy request of ``prompt_tokens`` prompt tokens (the model's chat template around
filler text) and exactly ``new_tokens`` new tokens, through ``OrtGenAISession``. The
figure that decides is the median wall time of that request. Candidates within
``TIE_MARGIN`` of the fastest tie: the smallest build wins a tie, then the one tried first
(fewer threads, the build's own options), so noise does not flip the choice, cores are left
free where they buy little, and of equally fast builds within the gate the smallest is kept.

The chosen session options are written into genai_config.json atomically; a chosen
rebuild replaces the build folder's files atomically (the old folder is renamed away only
after the new one is complete).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from slmk.api import ExecutionProvider, ModelInfo, Progress, UsageError
from slmk.api.files import link_or_copy_tree, temp_path
from slmk.api.models import build_problems
from slmk.api.operations import QUIET, build_info, get_registry, resolve_ep

from .builder import EMBEDDING_QUANTIZED_PRECISIONS, INT8_BLOCK_SIZE
from .session_options import logical_cores, write_session_options

#: A candidate this close to the fastest (relative request time) counts as a tie.
TIE_MARGIN = 0.03
#: Options a rebuild may try, per stage; each dict is merged into the builder options.
REBUILD_STAGES: tuple[tuple[str, tuple[dict[str, Any], ...]], ...] = (
    ("block_size", ({"block_size": 32}, {"block_size": 64}, {"block_size": 128})),
    ("accuracy_level", ({"accuracy_level": 4}, {"accuracy_level": 1})),
    ("lm_head", ({}, {"matmul_mixed_precision": "last_matmul:int8"})),
    # Untied int4/int8 models only: the embedding table, quantized by default, kept in float (a larger
    # file, much larger for a small model with a large vocabulary; exact lookups).
    ("float_embedding", ({}, {"op_types_to_quantize": "MatMul"})),
    # Tied models only: the embedding is read from the output layer's int4/int8 table; the
    # alternative keeps it as its own float table (bigger, exact lookups).
    ("embedding", ({}, {"shared_embeddings": "false", "op_types_to_quantize": "MatMul"})),
)
#: Stages that change something only when the source model ties its embedding to its output layer.
TIED_ONLY_STAGES = ("embedding",)
#: Stages that change something only for an int4/int8 build of a model with its own embedding table.
UNTIED_QUANTIZED_ONLY_STAGES = ("float_embedding",)

FILLER = "The morning was cool and the market opened early, and traders set out bread, fruit and fish. "

#: A quality gate: given a candidate build folder, None when it passes, else why it fails.
QualityGate = Callable[[Path], "str | None"]


@dataclass
class Trial:
    """One candidate: what was tried and what it measured (medians over the rounds)."""

    settings: dict[str, Any]  # session options, e.g. {"intra_op_num_threads": 2}
    build_options: dict[str, Any] = field(default_factory=dict)  # builder options of a rebuild ({}: as built)
    request_s: list[float] = field(default_factory=list)
    prefill_tps: list[float] = field(default_factory=list)
    decode_tps: list[float] = field(default_factory=list)
    first_token_s: list[float] = field(default_factory=list)
    quality: str = "not checked"  # "pass", "not checked", or "fail: why"
    chosen: bool = False
    size_bytes: int = 0  # the candidate's model files: among equally fast candidates the smallest wins

    @property
    def label(self) -> str:
        parts = [f"{k}={_text(v)}" for k, v in self.build_options.items()]
        parts += [f"threads={self.settings['intra_op_num_threads']}"] if "intra_op_num_threads" in self.settings else []
        parts += [f"{k}={_text(v)}" for k, v in self.settings.items() if k != "intra_op_num_threads"]
        return ", ".join(parts) or "as built"

    @property
    def median_request_s(self) -> float:
        return statistics.median(self.request_s) if self.request_s else float("inf")

    def median(self, name: str) -> float:
        values = getattr(self, name)
        return statistics.median(values) if values else float("nan")

    @property
    def eligible(self) -> bool:
        return bool(self.request_s) and not self.quality.startswith("fail")


@dataclass
class TuneResult:
    build_dir: Path
    prompt_tokens: int
    new_tokens: int
    rounds: int
    cores: int
    trials: list[Trial]
    written: dict[str, Any]  # the session options now in genai_config.json
    rebuilt: dict[str, Any]  # builder options of the rebuild that replaced the build ({}: none)

    @property
    def chosen(self) -> Trial:
        return next(t for t in self.trials if t.chosen)

    def table(self) -> str:
        """The trials as a Markdown table plus one line on the choice; the layout never varies."""
        lines = [
            f"tune {self.build_dir}: {self.cores} logical cores; one request of {self.prompt_tokens} prompt tokens "
            f"and {self.new_tokens} new tokens, median of {self.rounds} rounds",
            "",
            "| # | settings | prefill tok/s | decode tok/s | first token ms | request ms | quality | chosen |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for number, trial in enumerate(self.trials, 1):
            lines.append(
                f"| {number} | {trial.label} | {trial.median('prefill_tps'):.1f} | {trial.median('decode_tps'):.1f} "
                f"| {1000 * trial.median('first_token_s'):.1f} | {1000 * trial.median_request_s:.1f} "
                f"| {trial.quality} | {'yes' if trial.chosen else ''} |"
            )
        written = ", ".join(f"{k}={_text(v)}" for k, v in sorted(self.written.items()))
        lines.append("")
        lines.append(f"chosen: {self.chosen.label}; genai_config.json session_options: {written}")
        if self.rebuilt:
            lines.append("rebuilt with " + ", ".join(f"{k}={_text(v)}" for k, v in self.rebuilt.items()))
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "build_dir": str(self.build_dir),
            "prompt_tokens": self.prompt_tokens,
            "new_tokens": self.new_tokens,
            "rounds": self.rounds,
            "cores": self.cores,
            "written": self.written,
            "rebuilt": self.rebuilt,
            "chosen": self.chosen.label,
            "trials": [
                {
                    "label": t.label,
                    **asdict(t),
                    "median_request_s": t.median_request_s,
                    "median_prefill_tps": t.median("prefill_tps"),
                    "median_decode_tps": t.median("decode_tps"),
                    "median_first_token_s": t.median("first_token_s"),
                }
                for t in self.trials
            ],
        }


def _text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def thread_candidates(cores: int) -> list[int]:
    """1 .. cores; above 8 cores the powers of two plus the top few (every count costs a load per round)."""
    if cores <= 8:
        return list(range(1, cores + 1))
    picked = {1, cores, cores - 1, cores // 2}
    power = 2
    while power < cores:
        picked.add(power)
        power *= 2
    return sorted(picked)


# ------------------------------------------------------------------ measuring
def _scratch(parent: Path, name: str) -> Path:
    """A temporary folder beside the build (same filesystem: hard links work; clean_stale_tmp knows the prefix)."""
    folder = temp_path(parent / name)
    folder.mkdir()
    return folder


def _candidate_folder(model_dir: Path, settings: Mapping[str, Any], parent: Path) -> Path:
    """Hard links to the model files with a genai_config.json of its own (written atomically: the link breaks)."""
    folder = _scratch(parent, "tune")
    link_or_copy_tree(model_dir, folder)
    write_session_options(folder, settings)
    return folder


def _prompt_for(session, prompt_tokens: int) -> tuple[str, int]:
    """Filler text whose chat-templated prompt is as close to ``prompt_tokens`` as possible without going over."""
    words = FILLER.split()

    def text(count: int) -> str:
        return " ".join(words[i % len(words)] for i in range(count))

    def length(count: int) -> int:
        return len(session.encode(session.render_prompt([{"role": "user", "content": text(count)}])))

    low, high, best = 1, max(2, prompt_tokens), 1
    while low <= high:
        middle = (low + high) // 2
        if length(middle) <= prompt_tokens:
            best, low = middle, middle + 1
        else:
            high = middle - 1
    return text(best), length(best)


def _measure_once(folder: Path, execution_provider, content: str, prompt_tokens: int, new_tokens: int, trial: Trial):
    from .runtime import OrtGenAISession

    with OrtGenAISession(folder, execution_provider) as session:
        # min_length holds off the end token: every candidate generates exactly new_tokens.
        search = {"max_new_tokens": new_tokens, "min_length": prompt_tokens + new_tokens, "do_sample": False}
        for _ in session.generate([{"role": "user", "content": content}], **search):
            pass
        stats = session.last_stats
    trial.request_s.append(stats.total_s)
    trial.prefill_tps.append(stats.prompt_tokens_per_s)
    trial.decode_tps.append(stats.decode_tokens_per_s)
    trial.first_token_s.append(stats.time_to_first_token_s)


def _measure(trials: Sequence[Trial], folders: Sequence[Path], run: _Tuning) -> None:
    for round_index in range(run.options.rounds):
        run.progress.log(f"round {round_index + 1}/{run.options.rounds}: {len(trials)} candidates")
        for trial, folder in zip(trials, folders, strict=True):
            _measure_once(folder, run.ep, run.content, run.prompt_tokens, run.options.new_tokens, trial)


def _model_bytes(folder: Path) -> int:
    """model.onnx and its data: what differs between builds (slmk_build.json differs in paths and times)."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.name.endswith((".onnx", ".onnx.data")))


def _best(trials: Sequence[Trial]) -> Trial:
    eligible = [t for t in trials if t.eligible]
    if not eligible:
        raise UsageError("no candidate passed the quality gate", hint="check the build with `slmk compare`")
    fastest = min(t.median_request_s for t in eligible)
    # as fast as the fastest (within the margin): the smallest build, then the one tried first
    return min((t for t in eligible if t.median_request_s <= fastest * (1 + TIE_MARGIN)), key=lambda t: t.size_bytes)


# ------------------------------------------------------------------ tune
@dataclass(frozen=True)
class TuneOptions:
    """What `slmk tune` tries and how long it measures.

    ``threads``: the intra-op thread counts to try (default 1 .. logical cores).
    ``rebuild_options``: also try builder options (needs the HF source: ``source`` or slmk_build.json's).
    ``quality_gate``: checks each rebuilt candidate; the build as it is is taken to pass.
    Each candidate answers a prompt of ``prompt_tokens`` with ``new_tokens``, ``rounds`` times.
    """

    threads: Sequence[int] | None = None
    rebuild_options: bool = False
    source: Path | None = None
    quality_gate: QualityGate | None = None
    prompt_tokens: int = 128
    new_tokens: int = 32
    rounds: int = 3
    execution_provider: str = "cpu"


@dataclass
class _Tuning:
    """One tuning run as it goes: what every stage measures with, and what it has tried and made."""

    build: Path
    options: TuneOptions
    ep: ExecutionProvider
    progress: Progress
    content: str = ""
    prompt_tokens: int = 0  # the measured prompt's real length in tokens
    trials: list[Trial] = field(default_factory=list)
    scratch: list[Path] = field(default_factory=list)


def tune(build_dir: str | Path, options: TuneOptions | None = None, progress: Progress = QUIET) -> TuneResult:
    """Measure ``build_dir``'s settings here, write the fastest into its genai_config.json; see the module doc."""
    options = options or TuneOptions()
    threads, rebuild_options, source = options.threads, options.rebuild_options, options.source
    prompt_tokens, new_tokens, rounds = options.prompt_tokens, options.new_tokens, options.rounds
    build = Path(build_dir).expanduser().resolve()
    problems = build_problems(build)
    if problems:
        raise UsageError(f"cannot tune {build}: {'; '.join(problems)}", hint="pass the output folder of `slmk convert`")
    if rounds < 1 or prompt_tokens < 2 or new_tokens < 2:
        raise UsageError("rounds must be >= 1, prompt_tokens and new_tokens >= 2")
    cores = logical_cores()
    counts = sorted(set(threads)) if threads else thread_candidates(cores)
    if not counts or counts[0] < 1:
        raise UsageError(f"thread counts must be positive, not {list(threads or [])}", hint=f"use 1 to {cores}")
    info = build_info(build)
    if rebuild_options:
        source = Path(source or info.get("source") or "")
        if not (source / "config.json").is_file():
            raise UsageError(
                f"cannot rebuild {build}: its Hugging Face source {str(source) or '(not recorded)'} is not there",
                hint="pass the source model folder, or tune without rebuilding",
            )
    run = _Tuning(build, options, resolve_ep(get_registry(), options.execution_provider), progress)
    try:
        # ---- stage 1: threads on the build as it is
        size = _model_bytes(build)
        stage = [Trial(settings={"intra_op_num_threads": n}, quality="as built", size_bytes=size) for n in counts]
        folders = [_candidate_folder(build, t.settings, build.parent) for t in stage]
        run.scratch += folders
        from .runtime import OrtGenAISession

        with OrtGenAISession(folders[0], run.ep) as session:
            run.content, run.prompt_tokens = _prompt_for(session, prompt_tokens)
        progress.log(f"threads {', '.join(map(str, counts))}: {rounds} rounds")
        _measure(stage, folders, run)
        run.trials += stage
        best = _best(stage)
        best_folder = folders[stage.index(best)]
        # ---- stage 2: builder options (each stage keeps the best so far and varies one thing)
        if rebuild_options:
            best, best_folder = _rebuild_stages(run, Path(source), info, best, best_folder)
        best.chosen = True
        # ---- write: session options always; the model files only when a rebuild won
        if best.build_options:
            _replace_model_files(build, best_folder)
        written = write_session_options(build, best.settings)
        progress.log("genai_config.json session_options: " + json.dumps(best.settings, sort_keys=True))
    finally:
        for folder in run.scratch:
            shutil.rmtree(folder, ignore_errors=True)
    return TuneResult(
        build_dir=build,
        prompt_tokens=run.prompt_tokens,
        new_tokens=new_tokens,
        rounds=rounds,
        cores=cores,
        trials=run.trials,
        written=written,
        rebuilt=dict(best.build_options),
    )


def _rebuild_stages(
    run: _Tuning, source: Path, info: Mapping[str, Any], best: Trial, best_folder: Path
) -> tuple[Trial, Path]:
    """Each rebuild stage in turn: its candidates built, gated and measured against the best so far."""
    build, progress, quality_gate = run.build, run.progress, run.options.quality_gate
    tied = ModelInfo.load(source).config.get("tie_word_embeddings") is True
    precision = info.get("precision") or "int4"
    stages = [
        stage
        for stage in REBUILD_STAGES
        if (tied or stage[0] not in TIED_ONLY_STAGES)
        and ((not tied and precision in EMBEDDING_QUANTIZED_PRECISIONS) or stage[0] not in UNTIED_QUANTIZED_ONLY_STAGES)
    ]
    # The build's own builder options (slmk_build.json): every rebuild keeps them except what a stage varies,
    # and a candidate's label names only what differs from them.
    built = _built_options(info)
    current: dict[str, Any] = {}
    for name, choices in stages:
        stage: list[Trial] = []
        folders: list[Path] = []
        for choice in choices:
            options = {k: v for k, v in {**current, **choice}.items() if built.get(k) != v}
            if options == current:
                continue  # the best so far already has these options
            out = _scratch(build.parent, "rebuild")
            run.scratch.append(out)
            shutil.rmtree(out)  # convert() creates it atomically
            progress.log(f"{name}: rebuilding with {', '.join(f'{k}={_text(v)}' for k, v in options.items())}")
            everything = {**built, **options}
            quantization = {k: v for k, v in everything.items() if k in _QUANTIZATION_KEYS}
            extra = {k: v for k, v in everything.items() if k not in _QUANTIZATION_KEYS}
            trial = Trial(settings=dict(best.settings), build_options=options)
            # Should an option combination build but not load (the 0.18 builder alone wrote int4 +
            # a tied embedding + last_matmul:int8 so; slmk's builder fixes now make it loadable),
            # the candidate is reported as failed and the search goes on.
            problem = _build_and_load(source, out, precision, run.ep, quantization, {**extra, **best.settings})
            if problem:
                trial.quality = f"fail: {problem}"
            elif quality_gate is not None:
                reason = quality_gate(out)
                trial.quality = "pass" if reason is None else f"fail: {reason}"
            else:
                trial.quality = "not checked"
            trial.size_bytes = _model_bytes(out) if out.is_dir() else 0
            stage.append(trial)
            folders.append(out)
        if not stage:
            continue
        # the best so far is measured again in the same rounds: like against like
        rerun = Trial(
            settings=dict(best.settings),
            build_options=dict(best.build_options),
            quality=best.quality,
            size_bytes=best.size_bytes,
        )
        stage.insert(0, rerun)
        folders.insert(0, best_folder)
        # a candidate that failed the gate is not worth timing: it cannot be chosen
        measured = [(t, f) for t, f in zip(stage, folders, strict=True) if not t.quality.startswith("fail")]
        _measure([t for t, _ in measured], [f for _, f in measured], run)
        run.trials += stage
        winner = _best(stage)
        best, best_folder = winner, folders[stage.index(winner)]
        current = dict(best.build_options)
    return best, best_folder


def _build_and_load(source, out, precision, ep, quantization, extra) -> str | None:
    """Build a candidate and load it once; why it failed (one line), or None."""
    from slmk.api import SlmkError
    from slmk.api.operations import convert

    from .runtime import OrtGenAISession

    try:
        convert(
            source,
            out,
            precision=precision,
            execution_provider=ep.name,
            quantization=quantization,
            options=extra,
            force=True,
        )
        OrtGenAISession(out, ep).close()
    except SlmkError as exc:
        text = str(exc).splitlines()[0].replace("|", "/")  # it lands in a Markdown table cell
        return "does not build or load" if not text else text[:160]
    return None


_QUANTIZATION_KEYS = ("block_size", "accuracy_level", "is_symmetric", "algorithm")
#: What a build gets on cpu when it names nothing (slmk_build.json records only what was asked).
BUILDER_DEFAULTS: dict[str, Any] = {"block_size": 32, "accuracy_level": 4}


def _built_options(info: Mapping[str, Any]) -> dict[str, Any]:
    """The model builder's options of a build, from slmk_build.json's plan (session options left out)."""
    defaults = {**BUILDER_DEFAULTS, **({"block_size": INT8_BLOCK_SIZE} if info.get("precision") == "int8" else {})}
    for step in reversed((info.get("plan") or {}).get("steps") or []):
        if step.get("tool") == "ortgenai-builder":
            options = {**defaults, **(step.get("options") or {})}
            options.pop("intra_op_num_threads", None)
            return options
    return defaults


def _replace_model_files(build: Path, rebuilt: Path) -> None:
    """Swap the rebuilt folder in for the build, keeping slmk_build.json's record of the rebuild."""
    staged = _scratch(build.parent, "tuned")
    link_or_copy_tree(rebuilt, staged)
    old = temp_path(build, "old")
    os.replace(build, old)
    os.replace(staged, build)
    shutil.rmtree(old, ignore_errors=True)
