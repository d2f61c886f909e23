"""bench, validate, compare and deploy: measure what you deploy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from slmk.api import LoadRequest, UsageError
from slmk.api.cli import (
    State,
    cache_dir_option,
    emit_json,
    generation_options,
    human_size,
    installer_cache,
    pass_state,
    quiet_option,
    runtime_options,
    search_from,
)
from slmk.api.files import write_text_atomic
from slmk.api.operations import verification_summary

from .reference import REFERENCE_HELP, REFERENCES, SOURCE, choose_reference
from .validate import (
    DEFAULT_LEAK_KB_PER_RUN,
    DEFAULT_LEAK_RUNS,
    DEFAULT_MAX_SLOWDOWN,
    DEFAULT_SESSION_GROWTH_MB,
    DEFAULT_SESSIONS,
    MIN_LEAK_RUNS,
)


def _progress(state: State, quiet: bool, as_json: bool):
    return state.progress(quiet or as_json)


#: The runtime (from the serve plugin) whose sessions talk to an OpenAI-compatible endpoint.
ENDPOINT_RUNTIME = "openai-endpoint"


def endpoint_options(f):
    """--endpoint URL --model NAME [--api-key KEY]: measure a running OpenAI-compatible service instead."""
    f = click.option("--api-key", envvar="SLMK_ENDPOINT_API_KEY", help="With --endpoint: the Bearer key.")(f)
    f = click.option("--model", "endpoint_model", help="With --endpoint: the model name the service knows.")(f)
    return click.option(
        "--endpoint",
        help="Measure an OpenAI-compatible endpoint (slmk serve, Ollama, Foundry Local's service) instead of "
        "TARGET, e.g. http://127.0.0.1:8000/v1.",
    )(f)


def _open_target(state: State, target, runtime, execution_provider, cache_dir, endpoint=None, model=None, key=None):
    """(settings, folder, opener) for a build folder, an installed model name, or an endpoint."""
    from slmk.api import operations as app

    settings = state.settings({"runtime": runtime, "install.cache_dir": cache_dir})
    if endpoint:
        if target:
            raise UsageError("pass TARGET or --endpoint, not both", hint="--endpoint measures a running service")
        if not model:
            raise UsageError("--endpoint needs --model NAME", hint="the name the service lists under /v1/models")
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="slmk-endpoint-"))  # no build files: the service has them
        registry = app.get_registry()
        if ENDPOINT_RUNTIME not in registry.runtimes:
            raise UsageError(
                "--endpoint needs the serve plugin's openai-endpoint runtime", hint="pip install 'slmk[serve]'"
            )

        def open_endpoint():
            return registry.get("slmk_runtimes", ENDPOINT_RUNTIME).load(
                LoadRequest(
                    path=folder,
                    execution_provider=registry.get("slmk_execution_providers", execution_provider or "cpu"),
                    options={"base_url": endpoint, "model": model, "api_key": key},
                )
            )

        return settings, folder, open_endpoint
    if not target:
        raise UsageError("no TARGET given", hint="pass a build folder or an installed model name, or --endpoint URL")
    install_cache = installer_cache(settings)
    folder, installed = app.resolve_target(target, installer=settings["installer"], cache_dir=install_cache)

    def open_session():
        return app.open_session(
            folder,
            runtime=settings["runtime"],
            execution_provider=execution_provider,
            installed=installed,
            cache_dir=install_cache,
        )

    return settings, Path(folder), open_session


def _ep_of(folder: Path, execution_provider: str | None) -> str:
    from slmk.api.operations import build_info

    return execution_provider or build_info(folder).get("execution_provider") or "cpu"


def _eval_items(folder: Path, eval_file: str | None) -> tuple[list, str | None, str]:
    """(items, file used, note when there is none)."""
    from .evalset import default_file, load_eval

    path = Path(eval_file) if eval_file else default_file(folder, "eval.jsonl")
    if path is None:
        return (
            [],
            None,
            "no eval file given and none beside the source model (../data/eval.jsonl): pass --eval FILE.jsonl",
        )
    return load_eval(path), str(path), ""


def _heldout(folder: Path, heldout_file: str | None) -> tuple[str | None, str | None]:
    from .evalset import default_file

    path = Path(heldout_file).expanduser() if heldout_file else default_file(folder, "heldout.txt")
    if path is None:
        return None, None
    if not path.is_file():
        raise UsageError(f"held-out text {path} not found", hint="pass a plain-text file with --heldout")
    return path.read_text(encoding="utf-8"), str(path)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def _num(value: Any, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


# --------------------------------------------------------------------------- bench
@click.command()
@click.argument("target", required=False)
@runtime_options
@cache_dir_option
@endpoint_options
@click.option(
    "--lengths", help="Prompt lengths in tokens, comma-separated [default: 5 from 16 to the context, log-spaced]."
)
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True, help="Runs per prompt length.")
@click.option(
    "--new-tokens", type=click.IntRange(min=2), default=32, show_default=True, help="Tokens generated per run."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--plot", "plot_file", type=click.Path(dir_okay=False), help="Also draw decode speed and latency to this PNG."
)
@quiet_option
@pass_state
def bench(
    state: State,
    target,
    runtime,
    execution_provider,
    cache_dir,
    endpoint,
    endpoint_model,
    api_key,
    lengths,
    repeats,
    new_tokens,
    as_json,
    plot_file,
    quiet,
) -> None:
    """Speed and memory of a build folder, installed model (TARGET: folder or NAME[:VERSION]) or endpoint.

    For each prompt length (up to the model's context): time to first token, prompt
    tokens/s, decode tokens/s, CPU use and peak RSS, as median and p90 over the repeats.
    """
    from .bench import parse_lengths, run_bench
    from .driver import Driver
    from .resources import rss_bytes

    if plot_file:
        from .plot import require_matplotlib

        require_matplotlib()
    planned = parse_lengths(lengths)
    settings, folder, open_session = _open_target(
        state, target, runtime, execution_provider, cache_dir, endpoint, endpoint_model, api_key
    )
    baseline = rss_bytes()
    session = open_session()
    try:
        report = run_bench(
            Driver(session, folder),
            lengths=planned,
            repeats=repeats,
            new_tokens=new_tokens,
            baseline_rss=baseline,
            progress=_progress(state, quiet, as_json),
        )
    finally:
        session.close()
    report = {
        "target": target,
        "folder": str(folder),
        "runtime": ENDPOINT_RUNTIME if endpoint else settings["runtime"],
        "execution_provider": _ep_of(folder, execution_provider),
        **report,
    }
    if plot_file:
        from .plot import plot_bench

        report["plot"] = str(plot_bench(report, Path(plot_file), title=f"{target} ({settings['runtime']})"))
    if as_json:
        emit_json(report)
        return
    click.echo(
        f"bench {target} ({report['runtime']}, {report['execution_provider']}): context {report['context_length']}, "
        f"{new_tokens} new tokens, {repeats} repeats, {report['cpu_count']} CPUs"
    )
    click.echo(
        f"{'prompt':>7} {'first token ms':>16} {'prompt tok/s':>13} {'decode tok/s':>16} {'CPU %':>6} {'peak RSS':>10}"
    )
    click.echo(f"{'tokens':>7} {'median':>8}{'p90':>8} {'median':>13} {'median':>8}{'p90':>8} {'median':>6}")
    for row in report["lengths"]:
        click.echo(
            f"{row['prompt_tokens']:>7} {_ms(row['time_to_first_token_s']['median']):>8}"
            f"{_ms(row['time_to_first_token_s']['p90']):>8} {row['prompt_tokens_per_s']['median']:>13.0f} "
            f"{row['decode_tokens_per_s']['median']:>8.1f}{row['decode_tokens_per_s']['p90']:>8.1f} "
            f"{row['cpu_percent']['median']:>6.0f} {human_size(row['peak_rss_bytes']):>10}"
        )
    model_rss = (
        f" (+{human_size(report['model_rss_bytes'])} since before loading)" if report.get("model_rss_bytes") else ""
    )
    click.echo(
        f"peak RSS {human_size(report['peak_rss_bytes'])}{model_rss}"
        + (
            ""
            if report["fixed_answer_length"]
            else "; this runtime cannot fix the answer length: "
            "decode rates are over the tokens the model chose to write"
        )
    )
    if report.get("plot"):
        click.echo(f"plot: {report['plot']}")


# --------------------------------------------------------------------------- validate
@click.command()
@click.argument("target", required=False)
@runtime_options
@cache_dir_option
@endpoint_options
@click.option(
    "--eval",
    "eval_file",
    type=click.Path(dir_okay=False),
    help="JSONL of {messages, expected|exact|regex, format_regex|json_schema} "
    "[default: the model's ../data/eval.jsonl].",
)
@click.option(
    "--min-accuracy", type=click.FloatRange(0, 1), default=0.9, show_default=True, help="Domain answers needed."
)
@click.option(
    "--leak-runs",
    type=click.IntRange(min=2),
    default=DEFAULT_LEAK_RUNS,
    show_default=True,
    help=f"Generations in the leak check, at least; fewer than {MIN_LEAK_RUNS} cannot judge (the check says so).",
)
@click.option(
    "--leak-threshold-kb",
    type=click.FloatRange(min=0),
    default=DEFAULT_LEAK_KB_PER_RUN,
    show_default=True,
    help="Largest RSS slope allowed, KB per generation.",
)
@click.option(
    "--sessions",
    type=click.IntRange(min=2),
    default=DEFAULT_SESSIONS,
    show_default=True,
    help="Open/generate/close cycles.",
)
@click.option(
    "--session-growth-mb",
    type=click.FloatRange(min=0),
    default=DEFAULT_SESSION_GROWTH_MB,
    show_default=True,
    help="Largest RSS growth allowed over the cycles, MB.",
)
@click.option(
    "--max-slowdown",
    type=click.FloatRange(min=1),
    default=DEFAULT_MAX_SLOWDOWN,
    show_default=True,
    help="Decode time per token at a prompt length over what the shorter prompts' linear trend predicts, at most.",
)
@click.option("--strict", is_flag=True, help="Warnings fail too.")
@click.option(
    "--reference",
    type=click.Choice((SOURCE, "none")),
    help="source: also run the model the build was made from (transformers) on the eval set and set its "
    "accuracy beside the build's; none: check the build alone [default: source where it runs here].",
)
@generation_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--report", "report_file", type=click.Path(dir_okay=False), help="Also write the results as Markdown.")
@quiet_option
@pass_state
def validate(
    state: State,
    target,
    runtime,
    execution_provider,
    cache_dir,
    endpoint,
    endpoint_model,
    api_key,
    eval_file,
    min_accuracy,
    leak_runs,
    leak_threshold_kb,
    sessions,
    session_growth_mb,
    max_slowdown,
    strict,
    reference,
    max_new_tokens,
    temperature,
    top_p,
    top_k,
    repetition_penalty,
    greedy,
    as_json,
    report_file,
    quiet,
) -> None:
    """Run the validation checklist on a build folder, installed model or endpoint; exit 1 if a check fails.

    \b
    Checks: domain answers and output format (the eval file); edge cases (empty,
    whitespace-only, non-ASCII and emoji, longer than the context, template tokens
    typed by the user); consistent speed across prompt lengths; no memory growth
    over --leak-runs generations; --sessions sessions opened and closed; against
    the source model: the build's recorded check and the source's eval accuracy.
    """
    import datetime as _dt

    from .validate import ValidationLimits, ValidationRequest, render_markdown, run_validate

    settings, folder, open_session = _open_target(
        state, target, runtime, execution_provider, cache_dir, endpoint, endpoint_model, api_key
    )
    items, used_eval, eval_note = _eval_items(folder, eval_file)
    search = search_from(state, settings, max_new_tokens, temperature, top_p, top_k, repetition_penalty, greedy)
    answer_tokens = search.pop("max_new_tokens", None) or 64
    search.pop("max_length", None)
    if greedy is None:
        search["do_sample"] = False  # measurements repeat: greedy unless asked to sample
    source, source_note = _validation_source(folder, reference)
    limits = ValidationLimits(
        max_new_tokens=answer_tokens,
        leak_runs=leak_runs,
        leak_kb_per_run=leak_threshold_kb,
        sessions=sessions,
        session_growth_mb=session_growth_mb,
        min_accuracy=min_accuracy,
        max_slowdown=max_slowdown,
    )
    request = ValidationRequest(folder, items, eval_note, search, limits, source, source_note, strict)
    report = run_validate(open_session, request, _progress(state, quiet, as_json))
    report = {
        "target": target,
        "folder": str(folder),
        "runtime": ENDPOINT_RUNTIME if endpoint else settings["runtime"],
        "execution_provider": _ep_of(folder, execution_provider),
        "eval_file": used_eval,
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        **report,
    }
    if report_file:
        report["report_file"] = str(write_text_atomic(Path(report_file).expanduser(), render_markdown(report)))
    if as_json:
        emit_json(report)
    else:
        for check in report["checks"]:
            click.echo(f"{check['status'].upper():<4}  {check['title']}: {check['evidence']}")
        counts = ", ".join(f"{n} {s}" for s, n in report["counts"].items())
        click.echo(f"validate {target}: {'passed' if report['ok'] else 'FAILED'} ({counts}) in {report['seconds']} s")
        if report_file:
            click.echo(f"report: {report['report_file']}")
    if not report["ok"]:
        raise SystemExit(1)


def _validation_source(folder: Path, reference: str | None) -> tuple[Path | None, str]:
    """(the source folder validate runs beside the build, or None; why not). ``--reference source``
    that cannot run is refused in one line; by default the build is then checked alone, saying why."""
    from slmk.api import operations as app

    if reference == "none":
        return None, "--reference none: the source model is not run"
    recorded = app.build_info(folder).get("source")
    reason = app.source_unavailable(recorded) if recorded else "the build does not record its source folder"
    if reason and recorded and not Path(recorded).is_dir():
        reason = f"its source folder {recorded} is gone"
    if reason is None:
        return Path(recorded), ""
    if reference == SOURCE:
        raise UsageError(
            f"--reference source: the source model cannot run here: {reason}", hint="pass --reference none"
        )
    return None, f"the source model is not run: {reason}"


# --------------------------------------------------------------------------- compare
@click.command()
@click.argument("model_dir", type=click.Path())
@click.option("--precisions", default="fp32,int8,int4", show_default=True, help="Comma-separated precisions to build.")
@click.option("--ep", "execution_provider", help="Execution provider [default: slmk.toml execution_provider, cpu].")
@click.option("--runtime", help="Runtime to measure with [default: ortgenai].")
@click.option(
    "--eval", "eval_file", type=click.Path(dir_okay=False), help="Eval JSONL [default: MODEL_DIR/../data/eval.jsonl]."
)
@click.option(
    "--heldout",
    "heldout_file",
    type=click.Path(dir_okay=False),
    help="Held-out text for perplexity [default: MODEL_DIR/../data/heldout.txt].",
)
@click.option(
    "--tolerance", help='Quality a smaller precision must keep to be recommended [default: "ppl<=+5%,accuracy>=-5%"].'
)
@click.option("--reference", type=click.Choice(REFERENCES), help=REFERENCE_HELP)
@click.option("--no-verify", is_flag=True, help="Build without checking each build against the source model.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False), help="Also draw the table to this PNG.")
@quiet_option
@pass_state
def compare(
    state: State,
    model_dir,
    precisions,
    execution_provider,
    runtime,
    eval_file,
    heldout_file,
    tolerance,
    reference,
    no_verify,
    as_json,
    plot_file,
    quiet,
) -> None:
    """Build MODEL_DIR at several precisions and compare them; recommend the smallest good enough.

    The reference is the source model run by transformers (what you trained), one row of
    the table; --reference fp32 measures against the fp32 ONNX build instead. Per
    precision: size on disk (and ratio to the reference), decode tokens/s (and ratio),
    perplexity on held-out text, greedy agreement with the reference, domain accuracy,
    and the build's check against the source. Builds are cached.
    """
    from slmk.api import FORMAT_HF, ModelInfo
    from slmk.api import operations as app
    from slmk.api.operations import get_registry

    from .compare import CompareRequest, run_compare
    from .display import nested

    if plot_file:
        from .plot import require_matplotlib

        require_matplotlib()
    settings = state.settings({"execution_provider": execution_provider, "runtime": runtime})
    info = ModelInfo.load(app.materialize(model_dir))  # an adapter is compared merged into its base
    if info.format != FORMAT_HF:
        raise UsageError(
            f"{info.path} is not a Hugging Face model folder", hint="compare builds the model: pass its folder"
        )
    folder = info.path.resolve()
    ep = app.resolve_ep(get_registry(), settings["execution_provider"])
    items, used_eval, _ = _eval_items(folder, eval_file)
    heldout, used_heldout = _heldout(folder, heldout_file)
    progress = _progress(state, quiet, as_json)

    def open_session(path: Path):
        return app.open_session(path, runtime=settings["runtime"], execution_provider=ep.name)

    reference, reference_note = choose_reference(reference, folder)
    if reference_note and not as_json:
        click.echo(reference_note, err=True)
    request = CompareRequest(
        folder,
        [p.strip() for p in precisions.split(",") if p.strip()],
        items=items,
        heldout=heldout,
        tolerance=tolerance,
        cache_dir=Path(settings["cache_dir"]) if settings["cache_dir"] else None,
        reference=reference,
        verify=not no_verify,
    )
    report = run_compare(
        request, ep, open_session, progress=progress, sub_progress=nested(progress), open_source=app.open_source_session
    )
    report.update(
        {
            "reference_note": reference_note,
            "runtime": settings["runtime"],
            "eval_file": used_eval,
            "heldout": used_heldout,
        }
    )
    if plot_file:
        from .plot import plot_compare

        report["plot"] = str(plot_compare(report, Path(plot_file)))
    if as_json:
        emit_json(report)
        return
    ref = report["reference"]
    click.echo(f"compare {model_dir} on {ep.name} ({settings['runtime']}); ratios against {ref}")
    click.echo(
        f"{'precision':<9} {'size':>9} {'ratio':>6} {'decode tok/s':>12} {'ratio':>6} {'ppl':>9} {'ppl chg':>8} "
        f"{'agreement':>9} {'accuracy':>8}"
    )
    for row in report["precisions"]:
        click.echo(
            f"{row['precision']:<9} {human_size(row['size_bytes']):>9} {_num(row['size_ratio']):>6} "
            f"{_num(row['decode_tps'], '{:.1f}'):>12} {_num(row['decode_ratio']):>6} {_num(row['ppl'], '{:.3f}'):>9} "
            f"{_num(row['ppl_change_pct'], '{:+.2f}%'):>8} {_num(row['agreement'], '{:.3f}'):>9} "
            f"{_num(row['accuracy']):>8}"
        )
        for note in row["notes"]:
            click.echo(f"    note: {note}")
        if "verification" in row:
            click.echo(f"    source check: {verification_summary(row['verification'])}")
    rec = report["recommendation"]
    click.echo(f"recommendation: {rec['precision'] or 'none'} ({rec['why']})")
    if report.get("plot"):
        click.echo(f"plot: {report['plot']}")


# --------------------------------------------------------------------------- deploy
def _tried_table(tried: list[dict[str, Any]]) -> list[str]:
    lines = [
        f"{'build':<15} {'result':<6} {'size':>9} {'ppl':>9} {'accuracy':>8} {'agreement':>9} {'decode tok/s':>12}  why"
    ]
    for row in tried:
        reasons = "; ".join(r.removeprefix("ok: ").removeprefix("FAIL: ") for r in row["reasons"])
        label = row.get("build") or row["precision"]
        lines.append(
            f"{label + (' (ref)' if row['reference'] else ''):<15} {'pass' if row['ok'] else 'FAIL':<6} "
            f"{human_size(row['size_bytes']):>9} {_num(row['ppl'], '{:.3f}'):>9} {_num(row['accuracy']):>8} "
            f"{_num(row['agreement'], '{:.3f}'):>9} {_num(row['decode_tps'], '{:.1f}'):>12}  {reasons}"
        )
    return lines


@click.command()
@click.argument("model_dir", required=False, type=click.Path())
@click.option("--name", help="Name to install under [default: slmk.toml name].")
@click.option(
    "--quality-gate",
    "gate",
    help='e.g. "ppl<=+5%,accuracy>=0.9": install the smallest build that meets it (the precisions; int4 also at '
    "block 128, at block 64 with the output layer at int8, and with the model's own embedding table in float; "
    "int8 also at block 32).",
)
@click.option(
    "-p",
    "--precision",
    type=click.Choice(["int4", "int8", "fp16", "bf16", "fp32"]),
    help="Without a gate: the precision to deploy [default: slmk.toml precision, int4].",
)
@click.option("--ep", "execution_provider", help="Execution provider [default: slmk.toml execution_provider, cpu].")
@click.option("--runtime", help="Runtime to measure, validate and check with [default: ortgenai].")
@click.option("--installer", help="Installer plugin [default: foundry].")
@cache_dir_option
@click.option(
    "--eval", "eval_file", type=click.Path(dir_okay=False), help="Eval JSONL [default: MODEL_DIR/../data/eval.jsonl]."
)
@click.option(
    "--heldout",
    "heldout_file",
    type=click.Path(dir_okay=False),
    help="Held-out text for perplexity [default: MODEL_DIR/../data/heldout.txt].",
)
@click.option(
    "--leak-runs",
    type=click.IntRange(min=2),
    default=DEFAULT_LEAK_RUNS,
    show_default=True,
    help="Generations in the validation's leak check.",
)
@click.option(
    "--max-slowdown",
    type=click.FloatRange(min=1),
    default=DEFAULT_MAX_SLOWDOWN,
    show_default=True,
    help="Validation: decode time at a prompt length over the shorter prompts' linear trend, at most.",
)
@click.option("--force", is_flag=True, help="Replace the newest installed version instead of adding a new one.")
@click.option(
    "--tune",
    "tune_build",
    is_flag=True,
    help="Before installing, measure the chosen build's thread count here and keep the fastest (slmk tune).",
)
@click.option(
    "--serve",
    "serve_after",
    is_flag=True,
    help="Finish with the model served over the OpenAI-compatible API (slmk serve; Ctrl-C stops it).",
)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="With --serve: the port.")
@click.option("--reference", type=click.Choice(REFERENCES), help=REFERENCE_HELP)
@click.option("--no-verify", is_flag=True, help="Build without checking each build against the source model.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@quiet_option
@pass_state
def deploy(
    state: State,
    model_dir,
    name,
    gate,
    precision,
    execution_provider,
    runtime,
    installer,
    cache_dir,
    eval_file,
    heldout_file,
    leak_runs,
    max_slowdown,
    force,
    tune_build,
    serve_after,
    port,
    reference,
    no_verify,
    as_json,
    quiet,
) -> None:
    """Doctor, convert, quantize, template, validate and install MODEL_DIR in one command.

    With --quality-gate, builds every candidate (each precision the execution provider
    runs; int4 also at block 128, at block 64 with the output layer at int8, and with the
    model's own embedding table in float; int8 also at block 32), measures them smallest
    file first, and installs the first that
    passes; without one, deploys --precision (int4). Exits non-zero, installing
    nothing, when no build passes or validation fails.

    \b
    Gate terms (comma-separated): ppl<=12.5, ppl<=+5% (relative to the reference),
    accuracy>=0.9, agreement>=0.8 (with the reference), decode_tps>=50.
    The reference is the source model run by transformers (--reference fp32: the
    fp32 build). Every build is checked against the source (--no-verify skips it).
    """
    from .deploy import DeployRequest, NoPrecisionPasses
    from .deploy import deploy as run_deploy
    from .validate import ValidationLimits

    settings = state.settings(
        {
            "model": model_dir,
            "name": name,
            "execution_provider": execution_provider,
            "runtime": runtime,
            "installer": installer,
            "install.cache_dir": cache_dir,
        }
    )
    if not settings["model"]:
        raise UsageError("no model given", hint="pass MODEL_DIR or set `model` in slmk.toml (slmk init MODEL_DIR)")
    if not settings["name"]:
        raise UsageError("no name given", hint="pass --name NAME or set `name` in slmk.toml")
    serve_command = _serve_command() if serve_after else None
    tuner = _plugin_command("tune", "the ortgenai plugin's tune command") if tune_build else None
    if serve_after and as_json:
        raise UsageError("--serve keeps running and prints how to call the model", hint="drop --json or --serve")
    if precision is None and not gate and settings.source("precision") != "default":
        precision = settings["precision"]
    progress = _progress(state, quiet, as_json)
    try:
        request = DeployRequest(
            Path(settings["model"]),
            settings["name"],
            gate=gate,
            precision=precision,
            execution_provider=settings["execution_provider"],
            runtime=settings["runtime"],
            installer=settings["installer"],
            install_cache=installer_cache(settings),
            steps_cache=Path(settings["cache_dir"]) if settings["cache_dir"] else None,
            force=force,
            eval_file=Path(eval_file) if eval_file else None,
            heldout_file=Path(heldout_file) if heldout_file else None,
            validate_limits=ValidationLimits(leak_runs=leak_runs, max_slowdown=max_slowdown),
            reference=reference,
            verify=not no_verify,
        )
        result = run_deploy(request, tune=_tuning(tuner) if tuner else None, progress=progress)
    except NoPrecisionPasses as exc:
        if as_json:
            emit_json(exc.result.as_dict())
        elif not progress.quiet:
            for line in _tried_table([a.as_dict() for a in exc.result.tried]):
                click.echo(line, err=True)
        raise
    data = result.as_dict()
    if as_json:
        emit_json(data)
        return
    if gate:
        click.echo(f"quality gate {data['gate']}" + (f" (reference {data['reference']})" if data["reference"] else ""))
        for line in _tried_table(data["tried"]):
            click.echo(line)
    validation = data["validation"]
    counts = ", ".join(f"{n} {s}" for s, n in validation["counts"].items() if n)
    installed = data["installed"]
    click.echo(f"chose {data['chosen_build'] or data['chosen']}: validation passed ({counts})")
    click.echo(f"source check: {verification_summary(data['verification'])}")
    click.echo(
        f"installed {installed['ref']} ({installed['precision']}, {installed['execution_provider']}, "
        f"{human_size(installed['size_bytes'])}) at {installed['path']}"
    )
    first = data["first_answer"]
    click.echo(f"first answer: {first['question']} -> {first['answer'].strip()}")
    if serve_command is not None:
        click.get_current_context().invoke(
            serve_command,
            targets=(installed["ref"],),
            port=port,
            runtime=settings["runtime"],
            cache_dir=settings["install.cache_dir"],
        )


def _plugin_command(name: str, what: str) -> click.Command:
    """A command another plugin contributes, looked up by name (plugins never import each other)."""
    from slmk.api.operations import get_registry

    record = get_registry().commands.get(name)
    if record is None:
        raise UsageError(f"this needs {what}, which is not installed", hint="pip install 'slmk[all]'")
    return record.load()


def _tuning(tuner: click.Command):
    """deploy's tune step: `slmk tune BUILD` (threads only), its table on stderr so --json stays clean."""
    import contextlib
    import sys

    def tune(folder: Path) -> None:
        with contextlib.redirect_stdout(sys.stderr):
            click.get_current_context().invoke(tuner, build_dir=str(folder))

    return tune


def _serve_command() -> click.Command:
    """The `serve` command a plugin contributes (slmk_serve), checked before any work starts."""
    return _plugin_command("serve", "the serve plugin (pip install 'slmk[serve]')")
