"""`slmk sweep`: models x precisions x execution providers x quantizer options, each cell
built, measured (and validated), on an executor (this process, local workers, Ray).

The driver (this module) plans the cells, submits each cell's build task, and when
it finishes, the cell's measurement task (exclusive: it runs alone on its node, so
the figures are not disturbed). Every finished row is written at once to
``OUTPUT/results.jsonl`` (atomically), so ``resume=True`` after a crash skips the
cells already there. At the end: agreement with each model's reference precision,
the table (JSON, CSV, Markdown), the plots, and per model and EP the cell a quality
gate chooses (``install_best`` installs it).

The cell functions live in ``sweep_cells`` (top-level functions on plain data).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from slmk.api import PRECISIONS, ExecutorOptions, ModelInfo, Progress, Setting, SlmkError, Task, UsageError
from slmk.api.files import atomic_file, cache_root, hash_json, write_text_atomic
from slmk.api.models import MAX_CONTEXT_LENGTH
from slmk.api.operations import check_values, get_registry, materialize, read_toml

from . import sweep_cells
from .reference import REFERENCES, SOURCE, choose_reference

RESULTS_FILE = "results.jsonl"
#: The columns that depend only on the models and the tools, never on timing: two
#: executors must agree on them.
DETERMINISTIC_COLUMNS = (
    "cell",
    "model",
    "precision",
    "execution_provider",
    "quantizer",
    "size_bytes",
    "ppl",
    "accuracy",
)
#: The table's columns, in order (rows carry more: steps, notes, validation detail).
COLUMNS = (
    "model",
    "precision",
    "execution_provider",
    "quantizer",
    "size_bytes",
    "ppl",
    "ppl_change_pct",
    "accuracy",
    "agreement",
    "decode_tps",
    "time_to_first_token_s",
    "prompt_tps",
    "peak_rss_bytes",
    "validation_ok",
    "build_seconds",
    "measure_seconds",
    "node",
    "measure_node",
    "error",
)
DEFAULT_GATE = "ppl<=+5%,accuracy>=-5%"
#: A short validation per cell (the full one is `slmk validate`): enough to catch a
#: build that leaks or breaks on edge cases, seconds on a small model.
DEFAULT_VALIDATE = {"leak_runs": 20, "leak_kb_per_run": 64.0, "sessions": 3, "max_slowdown": 4.0}
#: Keys whose values are structured (lists of models, names, quantizer tables): parsed by their own code.
STRUCTURED_KEYS = ("models", "precisions", "execution_providers", "quantizers")
#: Tables of scalar settings, and ``validate`` may also be true/false.
TABLES = ("executor", "resources", "validate", "bench")


def _within(low: float, high: float) -> Any:
    return lambda v: low <= v <= high


def _lengths_ok(lengths: list[Any]) -> bool:
    return 0 < len(lengths) <= 64 and all(
        isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_CONTEXT_LENGTH for n in lengths
    )


#: The schema of a sweep file (and of the command line's overrides): every scalar key with
#: its type and range, checked up front by the one mechanism slmk.toml uses (``check_values``).
SWEEP_SETTINGS: tuple[Setting, ...] = (
    Setting("runtime", str, "ortgenai", "the runtime that measures"),
    Setting("eval", str, None, "eval.jsonl for the models that name none"),
    Setting("heldout", str, None, "heldout.txt for the models that name none"),
    Setting("cache_dir", str, None, "the step cache"),
    Setting("output", str, None, "the output folder"),
    Setting("quality_gate", str, DEFAULT_GATE, "the gate that chooses a cell per model"),
    Setting("install_best", bool, False, "install each model's chosen cell"),
    Setting(
        "reference",
        str,
        None,
        "what quality is measured against: source or fp32",
        check=lambda v: v in REFERENCES,
        check_help=" or ".join(REFERENCES),
    ),
    Setting("executor.name", str, "local", "local, ray or a plugin's executor"),
    Setting("executor.address", str, None, "ray: the cluster to join"),
    Setting("executor.workers", int, 1, "local: cells at once", check=_within(1, 1024), check_help="in 1..1024"),
    Setting("executor.num_cpus", int, None, "ray embedded: CPUs", check=_within(1, 1 << 16), check_help=">= 1"),
    Setting("executor.temp_dir", str, None, "the executor's own files"),
    Setting("resources.build_cpus", float, 1.0, "CPUs per build", check=_within(0.01, 1 << 16), check_help="> 0"),
    Setting("resources.build_memory_gb", float, None, "GB per build", check=_within(0.01, 1 << 20), check_help="> 0"),
    Setting(
        "resources.measure_cpus", float, 1.0, "CPUs per measurement", check=_within(0.01, 1 << 16), check_help="> 0"
    ),
    Setting(
        "resources.retries", int, 2, "reruns of a task whose node died", check=_within(0, 100), check_help="0..100"
    ),
    Setting(
        "validate.max_new_tokens", int, None, "tokens per answer", check=_within(1, 1 << 16), check_help="1..65536"
    ),
    Setting(
        "validate.leak_runs", int, None, "runs of the leak check", check=_within(0, 100_000), check_help="0..100000"
    ),
    Setting("validate.leak_kb_per_run", float, None, "leak allowed per run", check=_within(0, 1e9), check_help=">= 0"),
    Setting("validate.sessions", int, None, "sessions opened in turn", check=_within(0, 10_000), check_help="0..10000"),
    Setting("validate.session_growth_mb", float, None, "growth allowed", check=_within(0, 1e9), check_help=">= 0"),
    Setting("validate.min_accuracy", float, None, "eval accuracy required", check=_within(0, 1), check_help="0..1"),
    Setting("validate.max_slowdown", float, None, "slowdown allowed", check=_within(1, 1e6), check_help=">= 1"),
    Setting(
        "bench.lengths",
        list,
        None,
        "prompt lengths",
        check=_lengths_ok,
        check_help=f"1-64 integers in 1..{MAX_CONTEXT_LENGTH}",
    ),
    Setting("bench.repeats", int, None, "runs per length", check=_within(1, 10_000), check_help="1..10000"),
    Setting("bench.new_tokens", int, None, "tokens per run", check=_within(2, 1 << 16), check_help="2..65536"),
)
SWEEP_SETTINGS_BY_KEY = {s.key: s for s in SWEEP_SETTINGS}
SWEEP_KEYS = {*STRUCTURED_KEYS, *(s.key.split(".")[0] for s in SWEEP_SETTINGS)}


@dataclass(frozen=True)
class ModelSpec:
    path: Path
    name: str
    eval_file: Path | None = None
    heldout_file: Path | None = None


@dataclass(frozen=True)
class QuantizerSpec:
    name: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class SweepConfig:
    models: list[ModelSpec]
    precisions: list[str] = field(default_factory=lambda: ["fp32", "int8", "int4"])
    execution_providers: list[str] = field(default_factory=lambda: ["cpu"])
    quantizers: list[QuantizerSpec] = field(default_factory=lambda: [QuantizerSpec("default")])
    runtime: str = "ortgenai"
    cache_dir: Path | None = None
    output: Path = Path("sweep-out")
    quality_gate: str = DEFAULT_GATE
    install_best: bool = False
    executor: str = "local"
    executor_options: ExecutorOptions = field(default_factory=ExecutorOptions)
    build_cpus: float = 1.0
    build_memory_bytes: int | None = None  # None: estimated from the model's parameters
    measure_cpus: float = 1.0
    retries: int = 2
    validate: dict[str, Any] | None = field(default_factory=lambda: dict(DEFAULT_VALIDATE))
    bench: dict[str, Any] = field(default_factory=dict)
    reference: str | None = None  # "source" (transformers) or "fp32"; None: the source where it runs


# ------------------------------------------------------------------ configuration
def _table(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise UsageError(f"{where} must be a table", hint="see docs/sweep.md for the SWEEP.toml format")
    return data


def _str_list(value: Any, key: str) -> list[str]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or not value:
        raise UsageError(f"{key} must be a non-empty list of names", hint=f'e.g. {key} = ["fp32", "int4"]')
    return list(dict.fromkeys(value))


def model_spec(entry: Any, base: Path) -> ModelSpec:
    """A model folder (a string, or a table with path/name/eval/heldout), relative to ``base``."""
    if isinstance(entry, str):
        entry = {"path": entry}
    entry = _table(entry, "a models entry")
    unknown = set(entry) - {"path", "name", "eval", "heldout"}
    if unknown or "path" not in entry:
        raise UsageError(
            f"models entry {entry!r}: " + (f"unknown key {sorted(unknown)[0]!r}" if unknown else "no path"),
            hint='write models = ["DIR", {path = "DIR", name = "NAME", eval = "FILE", heldout = "FILE"}]',
        )
    wrong = sorted(key for key, value in entry.items() if not isinstance(value, str))
    if wrong:
        raise UsageError(
            f"models entry {entry!r}: {wrong[0]} = {entry[wrong[0]]!r} is not a string",
            hint='write models = ["DIR", {path = "DIR", name = "NAME", eval = "FILE", heldout = "FILE"}]',
        )
    path = (base / Path(entry["path"]).expanduser()).resolve()
    named = path  # its name and default data come from the folder the user named
    if get_registry().model_source(path) is not None:  # an adapter: swept merged into its base (cached)
        path = materialize(path).resolve()
    if not (path / "config.json").is_file():
        raise UsageError(f"model {path} is not a Hugging Face model folder (no config.json)", hint="pass its folder")

    def data_file(key: str, default_name: str) -> Path | None:
        if entry.get(key):
            found = (base / Path(entry[key]).expanduser()).resolve()
            if not found.is_file():
                raise UsageError(f"{key} file {found} of model {path} not found")
            return found
        return sweep_cells.model_data_file(named, default_name)

    return ModelSpec(
        path=path,
        name=str(entry.get("name") or (named.name if named.name not in ("model", "adapter") else named.parent.name)),
        eval_file=data_file("eval", "eval.jsonl"),
        heldout_file=data_file("heldout", "heldout.txt"),
    )


def load_config(
    path: str | Path, overrides: Mapping[str, Any] | None = None, executor: Mapping[str, Any] | None = None
) -> SweepConfig:
    """Read a SWEEP.toml (see docs/sweep.md); paths in it are relative to its folder.

    ``overrides`` replace top-level keys, ``executor`` keys of its ``[executor]`` table (the command line's).
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise UsageError(f"sweep file {file} not found", hint="pass a SWEEP.toml or model folders")
    data = read_toml(file, "the sweep file")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if executor:
        from_file = data.get("executor") or {}
        from_file = {"name": from_file} if isinstance(from_file, str) else from_file
        data["executor"] = {**_table(from_file, "[executor]"), **executor}
    return config_from_dict(data, base=file.parent.resolve(), origin=str(file))


def _checked_settings(data: Mapping[str, Any], origin: str) -> dict[str, Any]:
    """The scalar settings of a sweep, dotted, each of its type and in range (one line naming a bad one)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in STRUCTURED_KEYS:
            continue
        if key == "executor" and isinstance(value, str):
            value = {"name": value}
        if key == "validate" and isinstance(value, bool):
            continue
        if key in TABLES:
            for inner, inner_value in _table(value, f"[{key}]").items():
                flat[f"{key}.{inner}"] = inner_value
        else:
            flat[key] = value
    return check_values(flat, SWEEP_SETTINGS_BY_KEY, origin)


def config_from_dict(data: Mapping[str, Any], base: Path | None = None, origin: str = "the sweep") -> SweepConfig:
    base = base or Path.cwd()
    unknown = set(data) - SWEEP_KEYS
    if unknown:
        raise UsageError(f"unknown sweep key {sorted(unknown)[0]!r}", hint=f"keys: {', '.join(sorted(SWEEP_KEYS))}")
    settings = _checked_settings(data, origin)
    models = data.get("models")
    if isinstance(models, (str, dict)):
        models = [models]
    if not models or not isinstance(models, list):
        raise UsageError("the sweep names no models", hint='models = ["path/to/model", ...]')
    config = SweepConfig(models=[model_spec(m, base) for m in models])
    names = [m.name for m in config.models]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(
            f"two models are both named {twice[0]!r} in the table",
            hint='name them: models = [{path = "DIR", name = "NAME"}, ...]',
        )
    if "precisions" in data:
        config.precisions = _str_list(data["precisions"], "precisions")
    if "execution_providers" in data:
        config.execution_providers = _str_list(data["execution_providers"], "execution_providers")
    if "quantizers" in data:
        entries = data["quantizers"]
        if not isinstance(entries, list) or not entries:
            raise UsageError(
                "quantizers must be a list of tables", hint='[[quantizers]] name = "rtn" algorithm = "rtn"'
            )
        config.quantizers = []
        for entry in entries:
            entry = dict(_table(entry, "a quantizers entry"))
            name = entry.pop("name", None) or (
                "default" if not entry else ",".join(f"{k}={v}" for k, v in sorted(entry.items()))
            )
            config.quantizers.append(QuantizerSpec(str(name), entry))
        names = [q.name for q in config.quantizers]
        if len(set(names)) != len(names):
            raise UsageError("two quantizers entries have the same name", hint="give each a distinct name")
    for key in ("runtime", "quality_gate", "reference"):
        if key in settings:
            setattr(config, key, settings[key])
    if settings.get("cache_dir"):
        config.cache_dir = (base / Path(settings["cache_dir"]).expanduser()).resolve()
    if settings.get("output"):
        config.output = (base / Path(settings["output"]).expanduser()).resolve()
    config.install_best = settings.get("install_best", False)
    for key in ("eval", "heldout"):  # one file for every model that names none
        if settings.get(key):
            found = (base / Path(settings[key]).expanduser()).resolve()
            if not found.is_file():
                raise UsageError(f"{key} file {found} not found")
            field_name = "eval_file" if key == "eval" else "heldout_file"
            config.models = [
                replace(m, **{field_name: found}) if getattr(m, field_name) is None else m for m in config.models
            ]

    def table(name: str) -> dict[str, Any]:
        prefix = f"{name}."
        return {k[len(prefix) :]: v for k, v in settings.items() if k.startswith(prefix)}

    executor = table("executor")
    config.executor = executor.get("name", "local")
    config.executor_options = ExecutorOptions(
        workers=executor.get("workers", 1),
        address=executor.get("address") or None,
        num_cpus=executor.get("num_cpus"),
        temp_dir=Path(executor["temp_dir"]).expanduser() if executor.get("temp_dir") else None,
    )
    resources = table("resources")
    config.build_cpus = resources.get("build_cpus", 1.0)
    if resources.get("build_memory_gb"):
        config.build_memory_bytes = int(resources["build_memory_gb"] * 2**30)
    config.measure_cpus = resources.get("measure_cpus", 1.0)
    config.retries = resources.get("retries", 2)
    validate = data.get("validate", {})
    config.validate = None if validate is False else {**DEFAULT_VALIDATE, **table("validate")}
    config.bench = table("bench")
    return config


def check_config(config: SweepConfig) -> None:
    """Every name and term known before any work starts: bad input fails in one line."""
    registry = get_registry()
    unknown = [p for p in config.precisions if p not in PRECISIONS]
    if unknown:
        raise UsageError(f"unknown precision {unknown[0]!r}", hint=f"precisions: {', '.join(PRECISIONS)}")
    for name in config.execution_providers:
        try:
            ep = registry.get("slmk_execution_providers", name, "execution provider")
        except SlmkError as exc:
            raise UsageError(exc.message, hint=exc.hint) from None
        bad = [p for p in config.precisions if p not in ep.run_precisions]
        if bad:
            raise UsageError(
                f"{bad[0]} builds do not run on {ep.name}", hint=f"{ep.name} runs {', '.join(ep.run_precisions)}"
            )
    for hook, name, what in (
        ("slmk_executors", config.executor, "executor"),
        ("slmk_runtimes", config.runtime, "runtime"),
    ):
        try:
            registry.get(hook, name, what)
        except SlmkError as exc:  # a name the user typed: bad input
            raise UsageError(exc.message, hint=exc.hint) from None
    sweep_cells.check_gate(config.quality_gate)
    if config.executor_options.workers < 1:
        raise UsageError("workers must be at least 1")


# ------------------------------------------------------------------ cells
def build_memory_estimate(model: Path) -> int:
    """Bytes a conversion needs: the builder holds the fp32 weights and the graph it
    writes (about 6 bytes per parameter: 3 GB for 0.5 B parameters), plus the runtime."""
    info = ModelInfo.load(model)
    parameters = info.num_parameters or 0
    return 6 * parameters + 512 * 2**20


def plan_cells(config: SweepConfig) -> list[dict[str, Any]]:
    """One plain-data spec per cell. A full-precision cell ignores quantizer options,
    so it is planned once per model and EP, not once per quantizer."""
    cache = Path(config.cache_dir) if config.cache_dir else cache_root()
    cells = []
    for model in config.models:
        memory = config.build_memory_bytes or build_memory_estimate(model.path)
        for ep in config.execution_providers:
            for precision in sorted(config.precisions, key=PRECISIONS.index, reverse=True):
                quantized = precision in ("int4", "int8")
                for quantizer in config.quantizers if quantized else [QuantizerSpec("none")]:
                    identity = {
                        "model": str(model.path),
                        "precision": precision,
                        "execution_provider": ep,
                        "quantization": dict(quantizer.options),
                        "runtime": config.runtime,
                        "eval": str(model.eval_file),
                        "heldout": str(model.heldout_file),
                        "validate": config.validate,
                        "bench": config.bench,
                    }
                    cell_id = f"{model.name}-{ep}-{precision}-{quantizer.name}-{hash_json(identity)[:8]}"
                    cell_id = "".join(c if c.isalnum() or c in "-_." else "_" for c in cell_id)
                    cells.append(
                        {
                            "id": cell_id,
                            "model": str(model.path),
                            "model_name": model.name,
                            "precision": precision,
                            "execution_provider": ep,
                            "quantizer": quantizer.name,
                            "quantization": dict(quantizer.options),
                            "runtime": config.runtime,
                            "cache_dir": str(cache),
                            "build_dir": str(cache / "sweep-builds" / cell_id),
                            "eval_file": str(model.eval_file) if model.eval_file else None,
                            "heldout_file": str(model.heldout_file) if model.heldout_file else None,
                            "validate": config.validate,
                            "bench": config.bench,
                            "marks_dir": str(Path(config.output).resolve()),
                            "build_memory_bytes": memory,
                        }
                    )
    return cells


# ------------------------------------------------------------------ results file
def read_results(output: Path) -> dict[str, dict[str, Any]]:
    """The rows already finished (by cell id), as ``--resume`` reads them.

    The file is slmk's own, written whole each time (atomically): a line that is not a
    row means someone edited or damaged it, so it is refused in one line naming the file
    and the line, rather than guessed around (skipping it would rerun or drop cells silently).
    """
    rows: dict[str, dict[str, Any]] = {}
    path = results_path(output)
    if not path.exists():
        return rows
    hint = f"fix or delete that line (or the file) in {path}, or run without --resume to start over"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not UTF-8 text (byte {exc.start})", hint=hint) from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}", hint=hint) from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("cell"), str) or not row["cell"]:
            raise UsageError(f"{path} line {number} is not a result row of slmk sweep", hint=hint)
        rows[row["cell"]] = row
    return rows


def results_path(output: Path) -> Path:
    """``OUTPUT/results.jsonl``; an output that is not a folder, or a results path that is not a
    file, is refused in one line before any cell runs."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise UsageError(f"the sweep output {output} is not a folder", hint="pass -o DIR (created when missing)")
    path = output / RESULTS_FILE
    if os.path.lexists(path) and not path.is_file():
        raise UsageError(
            f"{path} is not a file (the sweep writes its rows there)", hint="move it away, or pass another -o DIR"
        )
    return path


def write_results(output: Path, rows: Iterable[dict[str, Any]]) -> None:
    write_text_atomic(Path(output) / RESULTS_FILE, "".join(json.dumps(r, default=str) + "\n" for r in rows))


# ------------------------------------------------------------------ running
class SweepProgress:
    """One line per cell state change and an overall bar, on the Progress stream."""

    def __init__(self, progress: Progress, total: int):
        self.progress = progress
        self.total = total
        self.done = 0
        self.failed = 0

    def state(self, cell: dict[str, Any], state: str, detail: str = "") -> None:
        self.progress.log(f"{cell['id']}: {state}" + (f" ({detail})" if detail else ""))

    def finished(self, failed: bool) -> None:
        self.done += 1
        self.failed += failed
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        failed_text = f", {self.failed} failed" if self.failed else ""
        self.progress.log(f"sweep [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} cells{failed_text}")


def _base_row(cell: dict[str, Any]) -> dict[str, Any]:
    return {
        "cell": cell["id"],
        "model": cell["model_name"],
        "model_path": cell["model"],
        "precision": cell["precision"],
        "execution_provider": cell["execution_provider"],
        "quantizer": cell["quantizer"],
        "quantization": cell["quantization"],
    }


def _build_task(config: SweepConfig, cell: dict[str, Any]) -> Task:
    return Task(
        name=f"build {cell['id']}",
        function=sweep_cells.build_cell,
        args=(cell,),
        num_cpus=config.build_cpus,
        memory_bytes=cell["build_memory_bytes"],
        accelerator=None if cell["execution_provider"] == "cpu" else cell["execution_provider"],
        retries=config.retries,
    )


def _measure_task(config: SweepConfig, cell: dict[str, Any], build: str) -> Task:
    return Task(
        name=f"measure {cell['id']}",
        function=sweep_cells.measure_cell,
        args=(cell, build),
        num_cpus=config.measure_cpus,
        exclusive=True,
        accelerator=None if cell["execution_provider"] == "cpu" else cell["execution_provider"],
        retries=config.retries,
    )


def run_cells(
    config: SweepConfig,
    cells: Sequence[dict[str, Any]],
    session,
    *,
    finished: dict[str, dict[str, Any]],
    on_row: Callable[[dict[str, Any]], None],
    progress: SweepProgress,
) -> None:
    """Submit every cell's build, then its measurement when the build is in; rows go to ``on_row``."""
    pending: dict[Future, tuple[str, dict[str, Any], dict[str, Any]]] = {}

    def fail(cell, row, message):
        row.update({"error": message, "state": "failed"})
        progress.state(cell, "failed", message)
        on_row(row)
        progress.finished(failed=True)

    def submit(phase, cell, row, task):
        try:
            pending[session.submit(task)] = (phase, cell, row)
        except Exception as exc:  # the executor refused it (e.g. no node has the accelerator)
            fail(cell, row, _one_line(exc))

    for cell in cells:
        if cell["id"] in finished:
            continue
        progress.state(cell, "building")
        submit("build", cell, _base_row(cell), _build_task(config, cell))
    while pending:
        done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
        for future in done:
            phase, cell, row = pending.pop(future)
            try:
                result = future.result()
            except Exception as exc:  # the task could not run (its retries used up, a lost cluster)
                fail(cell, row, f"{phase}: {_one_line(exc)}")
                continue
            value = result.value
            if value.get("error"):
                fail(cell, row, f"{phase}: {value['error']}")
                continue
            if phase == "build":
                row.update({k: value.get(k) for k in ("build", "size_bytes", "build_seconds", "steps", "verification")})
                row["node"] = result.node
                cached = all(s["status"] == "cached" for s in value["steps"])
                progress.state(cell, "built", f"{'cached' if cached else 'built'} on {result.node}; measuring")
                submit("measure", cell, row, _measure_task(config, cell, value["build"]))
            else:
                row.update(value)
                row["measure_node"] = result.node
                row["state"] = "done"
                detail = f"on {result.node}"
                if value.get("decode_tps") is not None:
                    detail += f", {value['decode_tps']:.1f} tok/s"
                progress.state(cell, "done", detail)
                on_row(row)
                progress.finished(failed=False)


def _one_line(exc: BaseException) -> str:
    text = exc.one_line() if hasattr(exc, "one_line") else f"{type(exc).__name__}: {exc}"
    return " ".join(str(text).split())[:500]


def measure_sources(config: SweepConfig, rows: list[dict[str, Any]], progress: Progress) -> dict[str, dict[str, Any]]:
    """Each model's source (transformers on its folder), measured in the driver as the cells
    measure builds (perplexity, accuracy, greedy answers): the reference of its rows. A model whose
    source cannot run here (or ``reference = "fp32"``) gets none: its most precise cell is the reference."""
    from slmk.api.operations import open_source_session

    from .driver import Driver
    from .evalset import load_eval
    from .quality import Workload, agreement_prompts, measure

    measured_models = {r["model"] for r in rows if not r.get("error")}
    sources = {}
    for model in config.models:
        if model.name not in measured_models:
            continue
        reference, note = choose_reference(config.reference, model.path)
        if note:
            progress.log(f"{model.name}: {note}")
        if reference != SOURCE:
            continue
        items = load_eval(model.eval_file) if model.eval_file else []
        heldout = model.heldout_file.read_text(encoding="utf-8") if model.heldout_file else None
        with progress.step(f"{model.name}: measure the source model (transformers)"):
            session = open_source_session(model.path)
            try:
                driver = Driver(session, model.path)
                prompts = agreement_prompts(items, heldout)
                need = {"ppl", "accuracy", "answers"}
                found = measure(driver, SOURCE, model.path, Workload(need, items, heldout, prompts))
                answers = [driver.tokens(answer) for answer in found.answers]  # token ids, as the cells give theirs
            finally:
                session.close()
        row = {k: v for k, v in found.as_dict().items() if k in ("precision", "path", "size_bytes", "ppl", "accuracy")}
        sources[model.name] = {**row, "answer_tokens": answers}
    return sources


def finish_table(
    rows: list[dict[str, Any]], sources: Mapping[str, dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Add what needs several cells: agreement and perplexity change against each model's
    reference on the same EP: its source model (``sources``, by model name) where measured, else
    its most precise measured cell. Sorted for reading."""
    sources = sources or {}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["execution_provider"]), []).append(row)
    for (model, _), group in groups.items():
        measured = [r for r in group if not r.get("error") and r.get("answer_tokens") is not None]
        if not measured:
            continue
        reference = sources.get(model) or max(
            measured, key=lambda r: (PRECISIONS.index(r["precision"]), r["quantizer"] == "none")
        )
        for row in measured:
            if row is reference:
                row["agreement"], row["exact_agreement"] = 1.0, 1.0
            else:
                token, exact = sweep_cells.agreement(row["answer_tokens"], reference["answer_tokens"])
                row["agreement"], row["exact_agreement"] = round(token, 4), round(exact, 4)
            if row.get("ppl") and reference.get("ppl"):
                row["ppl_change_pct"] = round(100 * (row["ppl"] / reference["ppl"] - 1), 3)
            row["reference"] = reference["precision"]
    return sorted(
        rows,
        key=lambda r: (r["model"], r["execution_provider"], -PRECISIONS.index(r["precision"]), r["quantizer"]),
    )


def choices(
    rows: list[dict[str, Any]], gate: str, sources: Mapping[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """Per model and EP, the cell the quality gate chooses (relative terms judged against the model's
    source where it was measured)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(f"{row['model']}@{row['execution_provider']}", []).append(row)
    chosen = {}
    for key, group in groups.items():
        choice = sweep_cells.choose(group, gate, (sources or {}).get(group[0]["model"]))
        choice.update({"model": group[0]["model"], "execution_provider": group[0]["execution_provider"]})
        chosen[key] = choice
    return chosen


def run_sweep(
    config: SweepConfig,
    *,
    resume: bool = False,
    progress: Progress | None = None,
    session=None,
) -> dict[str, Any]:
    """Run the sweep; returns ``{"rows", "choices", "failed", "output", "files", ...}``.

    ``session``: an executor session opened by the caller (kept open); otherwise the
    configured executor is opened and closed here.
    """
    check_config(config)
    progress = progress or Progress(quiet=True)
    output = Path(config.output).resolve()
    results_path(output)
    output.mkdir(parents=True, exist_ok=True)
    cells = plan_cells(config)
    previous = read_results(output) if resume else {}
    planned_ids = {c["id"] for c in cells}
    # resume skips the cells that finished (a failed cell is tried again); without
    # resume the results of an earlier sweep into this folder are replaced
    finished = {k: r for k, r in previous.items() if k in planned_ids and not r.get("error")}
    rows: dict[str, dict[str, Any]] = dict(finished)
    tracker = SweepProgress(progress, len(cells))
    for cell in cells:
        if cell["id"] in finished:
            tracker.state(cell, "finished earlier: skipped (--resume)")
            tracker.finished(failed=False)
    write_results(output, rows.values())

    def on_row(row: dict[str, Any]) -> None:
        rows[row["cell"]] = row
        write_results(output, rows.values())  # each finished row is on disk at once

    start = time.perf_counter()
    own_session = session is None
    if own_session:
        executor = get_registry().get("slmk_executors", config.executor, "executor")
        session = executor.open(config.executor_options)
    try:
        run_cells(config, cells, session, finished=finished, on_row=on_row, progress=tracker)
    finally:
        if own_session:
            session.close()
    sources = measure_sources(config, [rows[c["id"]] for c in cells if c["id"] in rows], progress)
    table = finish_table([rows[c["id"]] for c in cells if c["id"] in rows], sources)
    picked = choices(table, config.quality_gate, sources)
    result = {
        "executor": config.executor,
        "quality_gate": config.quality_gate,
        "sources": {name: {k: v for k, v in row.items() if k != "answer_tokens"} for name, row in sources.items()},
        "cells": len(cells),
        "skipped": len(finished),
        "failed": sum(1 for r in table if r.get("error")),
        "seconds": round(time.perf_counter() - start, 3),
        "output": str(output),
        "rows": [{k: v for k, v in r.items() if k != "answer_tokens"} for r in table],
        "choices": picked,
    }
    write_results(output, table)
    result["files"] = write_outputs(output, result)
    if config.install_best:
        result["installed"] = install_best(picked, progress)
    return result


# ------------------------------------------------------------------ outputs
def _cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_cell_text(row.get(c)) for c in COLUMNS])
    return buffer.getvalue()


def table_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Sweep: {result['cells']} cells on {result['executor']}, quality gate `{result['quality_gate']}`",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    for row in result["rows"]:
        lines.append("| " + " | ".join(_cell_text(row.get(c)).replace("|", "/") for c in COLUMNS) + " |")
    lines += ["", "## Chosen by the quality gate", ""]
    for choice in result["choices"].values():
        lines.append(
            f"- {choice['model']} on {choice['execution_provider']}: {choice['precision'] or 'none'} — {choice['why']}"
        )
    return "\n".join(lines) + "\n"


def write_outputs(output: Path, result: dict[str, Any]) -> dict[str, str]:
    files = {
        "json": output / "table.json",
        "csv": output / "table.csv",
        "markdown": output / "table.md",
    }
    write_text_atomic(files["json"], json.dumps(result, indent=2, default=str) + "\n")
    write_text_atomic(files["csv"], table_csv(result["rows"]))
    write_text_atomic(files["markdown"], table_markdown(result))
    written = {k: str(v) for k, v in files.items()}
    plot = plot_sweep(result, output / "sweep.png")
    if plot:
        written["plot"] = str(plot)
    return written


def plot_sweep(result: dict[str, Any], path: Path) -> Path | None:
    """Size against decode speed and against perplexity, one marker per cell; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in result["rows"] if not r.get("error")]
    if not rows:
        return None
    figure, (speed, quality) = plt.subplots(1, 2, figsize=(11, 4.5))
    for model in sorted({r["model"] for r in rows}):
        mine = [r for r in rows if r["model"] == model]
        sizes = [r["size_bytes"] / 2**20 for r in mine]
        speed.scatter(sizes, [r.get("decode_tps") or 0 for r in mine], label=model)
        quality.scatter(sizes, [r.get("ppl") or 0 for r in mine], label=model)
        for r, size in zip(mine, sizes, strict=True):
            label = r["precision"] + ("" if r["quantizer"] in ("none", "default") else f" {r['quantizer']}")
            speed.annotate(label, (size, r.get("decode_tps") or 0), fontsize=7)
            quality.annotate(label, (size, r.get("ppl") or 0), fontsize=7)
    speed.set(xlabel="size on disk (MB)", ylabel="decode tokens/s", title="speed")
    quality.set(xlabel="size on disk (MB)", ylabel="perplexity (held-out)", title="quality")
    speed.legend(fontsize=8)
    figure.tight_layout()
    with atomic_file(path) as tmp:
        figure.savefig(tmp, dpi=110)
    plt.close(figure)
    return path


def install_best(picked: dict[str, dict[str, Any]], progress: Progress) -> list[dict[str, Any]]:
    """Install each chosen build under its model's name (a new version when installed already)."""
    from slmk.api.operations import install

    installed = []
    for choice in picked.values():
        if not choice.get("build"):
            installed.append({"model": choice["model"], "installed": None, "why": choice["why"]})
            continue
        model = install(choice["build"], choice["model"], progress=progress)
        installed.append({"model": choice["model"], "installed": model.ref, "path": str(model.path)})
        progress.log(f"installed {model.ref} ({choice['precision']}, {choice['execution_provider']})")
    return installed


def quick_config(
    models: Sequence[str],
    *,
    precisions: str | None = None,
    execution_providers: str | None = None,
    **settings: Any,
) -> SweepConfig:
    """The simple case from the command line: model folders and comma-separated names."""
    data: dict[str, Any] = {"models": list(models)}
    if precisions:
        data["precisions"] = precisions
    if execution_providers:
        data["execution_providers"] = execution_providers
    data.update({k: v for k, v in settings.items() if v is not None})
    return config_from_dict(data, base=Path.cwd())


__all__ = [
    "COLUMNS",
    "DETERMINISTIC_COLUMNS",
    "SweepConfig",
    "config_from_dict",
    "load_config",
    "quick_config",
    "read_results",
    "run_sweep",
]

if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `slmk sweep` (plugins/slmk_measure/sweep_cli.py)")
