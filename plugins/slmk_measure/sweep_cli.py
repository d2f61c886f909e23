"""The `slmk sweep` command (the measurement plugin contributes it as a Command record)."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import click

from slmk.api import Progress

from .reference import REFERENCE_HELP, REFERENCES


def _human(size) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def _num(value, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


@click.command(name="sweep")
@click.argument("targets", nargs=-1, required=True)
@click.option("--precisions", help="Comma-separated precisions [default: fp32,int8,int4, or the file's].")
@click.option("--eps", "execution_providers", help="Comma-separated execution providers [default: cpu].")
@click.option("--executor", help="local (this machine) or ray [default: local, or the file's].")
@click.option("--workers", type=click.IntRange(min=1), help="local: cells at once, in worker processes.")
@click.option("--address", help='ray: "auto" or "ray://HOST:10001" to join a cluster [default: embedded].')
@click.option("--num-cpus", type=click.IntRange(min=1), help="ray: CPUs of an embedded cluster.")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Step cache (a shared path on a cluster).")
@click.option("-o", "--output", type=click.Path(file_okay=False), help="Output folder [default: sweep-out].")
@click.option("--quality-gate", "gate", help='e.g. "ppl<=+5%,accuracy>=0.9": per model, the smallest cell within it.')
@click.option("--install-best", is_flag=True, help="Install the cell the gate chooses for each model.")
@click.option("--reference", type=click.Choice(REFERENCES), help=REFERENCE_HELP)
@click.option("--no-validate", is_flag=True, help="Skip the short validation of each cell.")
@click.option("--resume", is_flag=True, help="Skip the cells whose rows are in OUTPUT/results.jsonl.")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def sweep(
    targets,
    precisions,
    execution_providers,
    executor,
    workers,
    address,
    num_cpus,
    cache_dir,
    output,
    gate,
    install_best,
    reference,
    no_validate,
    resume,
    as_json,
    quiet,
) -> None:
    """Build and measure models x precisions x execution providers (TARGETS: SWEEP.toml or MODEL_DIR...).

    \b
    Each cell converts (through the step cache; each build checked against the source
    model), measures (size, perplexity, accuracy, agreement with the reference, decode
    speed, a short bench) and validates. The reference of each model is its source run
    by transformers (--reference fp32: its most precise cell).
    Output: OUTPUT/table.json, table.csv, table.md, sweep.png and results.jsonl (what
    --resume reads). Exits 1 when a cell failed; the others still run.

    \b
      slmk sweep SWEEP.toml
      slmk sweep model-a model-b --precisions fp32,int4 --executor ray --json
    """
    from .sweep import load_config, quick_config, run_sweep

    overrides = {
        "cache_dir": cache_dir,
        "output": output,
        "quality_gate": gate,
        "reference": reference,
        "install_best": install_best or None,
        "validate": False if no_validate else None,
    }
    if precisions:
        overrides["precisions"] = precisions
    if execution_providers:
        overrides["execution_providers"] = execution_providers
    executor_settings = {"name": executor, "workers": workers, "address": address, "num_cpus": num_cpus}
    executor_settings = {k: v for k, v in executor_settings.items() if v is not None}
    if len(targets) == 1 and targets[0].endswith(".toml"):
        config = load_config(Path(targets[0]), overrides, executor=executor_settings)
    else:
        if executor_settings:
            overrides["executor"] = executor_settings
        config = quick_config(list(targets), **overrides)
    progress = Progress(quiet=quiet or as_json)
    # an executor's own chatter (Ray prints retried tasks on stdout) goes to stderr: stdout
    # holds only the table, so --json output stays parseable
    with contextlib.redirect_stdout(sys.stderr):
        result = run_sweep(config, resume=resume, progress=progress)
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
    else:
        click.echo(
            f"sweep: {result['cells']} cells on {result['executor']} in {result['seconds']:.1f} s "
            f"({result['skipped']} resumed, {result['failed']} failed); gate {result['quality_gate']}"
        )
        click.echo(
            f"{'model':<16} {'precision':<9} {'ep':<5} {'quantizer':<10} {'size':>9} {'ppl':>9} {'accuracy':>8} "
            f"{'agreement':>9} {'decode tok/s':>12}  node"
        )
        for row in result["rows"]:
            if row.get("error"):
                click.echo(
                    f"{row['model']:<16} {row['precision']:<9} {row['execution_provider']:<5} "
                    f"{row['quantizer']:<10} FAILED: {row['error']}"
                )
                continue
            click.echo(
                f"{row['model']:<16} {row['precision']:<9} {row['execution_provider']:<5} {row['quantizer']:<10} "
                f"{_human(row.get('size_bytes')):>9} {_num(row.get('ppl'), '{:.3f}'):>9} "
                f"{_num(row.get('accuracy')):>8} {_num(row.get('agreement'), '{:.3f}'):>9} "
                f"{_num(row.get('decode_tps'), '{:.1f}'):>12}  {row.get('node')}/{row.get('measure_node')}"
            )
        for choice in result["choices"].values():
            click.echo(
                f"choice for {choice['model']} on {choice['execution_provider']}: "
                f"{choice['precision'] or 'none'} ({choice['why']})"
            )
        for item in result.get("installed") or []:
            click.echo(f"installed: {item.get('installed') or 'nothing'} for {item['model']}")
        click.echo(
            f"table: {result['files']['markdown']} (also .json, .csv"
            + (", plot" if "plot" in result["files"] else "")
            + ")"
        )
    if result["failed"]:
        sys.exit(1)
