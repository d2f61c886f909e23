"""``slmk plugin new``: start a plugin package from plugin_template/."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .scaffold import KIND_NAMES, KINDS


@click.group("plugin")
def plugin_group() -> None:
    """Write slmk plugins: `slmk plugin new NAME --kind KIND` renders a working package."""


@plugin_group.command("new")
@click.argument("name")
@click.option(
    "--kind",
    required=True,
    type=click.Choice(KIND_NAMES),
    help="What the plugin contributes: " + "; ".join(f"{k}: {v.record}" for k, v in KINDS.items()) + ".",
)
@click.option(
    "-o",
    "--output-dir",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder to create slmk-NAME/ in.",
)
@click.option("--force", is_flag=True, help="Replace an existing slmk-NAME/ folder.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def plugin_new(name: str, kind: str, output_dir: str, force: bool, as_json: bool) -> None:
    """Render a new plugin package, slmk-NAME/.

    NAME: lowercase letters, digits and dashes, starting with a letter; it gives the
    import package slmk_NAME and the entry point NAME. The package holds pyproject.toml
    with the `slmk` entry point, the hook implementation for KIND (a small working
    example), tests that pass as generated, and a README. See docs/plugin-authors.md.
    """
    from .scaffold import new_plugin

    made = new_plugin(name, kind, Path(output_dir), force=force)
    if as_json:
        click.echo(json.dumps(made.as_dict(), indent=2))
    else:
        click.echo(f"created {made.path}/ ({kind} plugin: {made.hook} -> {KINDS[kind].record} {name!r})")
        for file in made.files:
            click.echo(f"  {file}")
        click.echo("next:")
        click.echo(f"  pip install -e {made.path}")
        click.echo(f"  slmk plugins                 # lists {name}")
        click.echo(f"  python -m pytest {made.path}")
    for note in made.notes:
        click.echo(f"note: {note}", err=True)


@plugin_group.command("hooks")
def plugin_hooks() -> None:
    """Print the hook reference (docs/hooks.md): every hook, its record and a runnable example."""
    from .docgen import render

    click.echo(render(), nl=False)
