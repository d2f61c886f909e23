"""`slmk plugins` and `slmk doctor`: who provides what, and whether this machine is ready."""

from __future__ import annotations

import sys

import click

from ..plugins import get_registry
from .options import emit_json, json_option


@click.command()
@json_option
def plugins(as_json: bool) -> None:
    """List plugins: versions, hooks, what each contributes, and load errors and name clashes."""
    from . import cli

    registry = get_registry()
    registry.collect_all()
    cli.list_commands(click.get_current_context())  # records plugin commands that shadow built-in ones
    infos = [info.as_dict() for info in registry.plugin_infos()]
    if as_json:
        emit_json(infos)
        return
    for info in infos:
        status = "ok" if info["loaded"] and not info["errors"] else ("error" if info["errors"] else "off")
        version = f" {info['distribution']} {info['version']}" if info["distribution"] else ""
        click.echo(f"{info['name']} [{status}]{version}  ({info['module']})")
        for hook, names in sorted(info["records"].items()):
            click.echo(f"    {hook.removeprefix('slmk_')}: {', '.join(names)}")
        for error in info["errors"]:
            click.echo(f"    ! {error}")


@click.command()
@json_option
def doctor(as_json: bool) -> None:
    """Check Python, memory, disk, packages, execution providers and plugins; each problem with its fix.

    Exits 1 when a check fails (warnings do not fail).
    """
    from ..app import run_doctor
    from . import cli

    cli.list_commands(click.get_current_context())  # so shadowed plugin commands are reported too
    results = run_doctor(get_registry())
    failed = any(r["status"] == "fail" for r in results)
    if as_json:
        emit_json({"ok": not failed, "checks": results})
    else:
        marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
        for r in results:
            click.echo(f"[{marks[r['status']]}] {r['name']}: {r['detail']}")
            if r["fix"] and r["status"] != "ok":
                click.echo(f"       fix: {r['fix']}")
        click.echo("doctor: " + ("problems found" if failed else "all required checks passed"))
    if failed:
        sys.exit(1)
