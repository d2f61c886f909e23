"""`slmk template show`: the PromptTemplate slmk writes for a model, a build or a family, and its source."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from slmk.api import FORMAT_HF, ModelInfo, UsageError
from slmk.api.cli import emit_json
from slmk.api.operations import Registry, get_registry
from slmk.api.templates import resolve_template


def show_template(target: str, template_file: Path | None = None, registry: Registry | None = None) -> dict[str, Any]:
    """The PromptTemplate for a model/build folder or a family name, with its source."""
    registry = registry or get_registry()
    if not Path(target).exists() and target in registry.model_families:
        family = registry.model_families[target]
        if not family.chat_template:
            raise UsageError(f"family {target!r} publishes no chat template", hint="pass a model folder instead")
        info = ModelInfo(
            path=Path(target),
            format=FORMAT_HF,
            config={},
            model_type="",
            architectures=(),
            chat_template=family.chat_template,
        )
        tpl = registry.family_prompt_template(family, info)
        return {
            "source": f"family:{target}",
            "family": target,
            "prompt_template": tpl.to_foundry(),
            "stop_tokens": list(family.stop_tokens),
            "generation_defaults": dict(family.generation_defaults),
            "notes": [],
        }
    if not Path(target).exists():
        known = ", ".join(sorted(registry.model_families))
        raise UsageError(f"{target} is neither a folder nor a known family", hint=f"families: {known}")
    info = ModelInfo.load(target)
    resolved = resolve_template(registry, info, template_file)
    family = registry.model_families.get(resolved.family) if resolved.family else None
    return {
        "source": resolved.source,
        "family": resolved.family,
        "prompt_template": resolved.template.to_foundry(),
        "stop_tokens": list(family.stop_tokens) if family else [],
        "generation_defaults": dict(family.generation_defaults) if family else {},
        "notes": list(resolved.notes),
    }


@click.group()
def template() -> None:
    """Prompt templates: what slmk will write for a model, and where it came from."""


@template.command("show")
@click.argument("target")
@click.option("--template", "template_file", type=click.Path(dir_okay=False), help="Use this template file instead.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def template_show(target, template_file, as_json) -> None:
    """Print the PromptTemplate for TARGET: a model or build folder, or a family name."""
    data = show_template(target, Path(template_file) if template_file else None)
    if as_json:
        emit_json(data)
        return
    click.echo(f"# source: {data['source']}" + (f" (family {data['family']})" if data.get("family") else ""))
    for key in ("system", "user", "assistant", "prompt"):
        click.echo(f"{key:<9} {json.dumps(data['prompt_template'][key])}")
    if data.get("stop_tokens"):
        click.echo(f"stop      {', '.join(data['stop_tokens'])}")
    for note in data.get("notes", []):
        click.echo(f"note: {note}")
