"""`slmk repair`: put a Foundry Local cache back in order without installing anything."""

from __future__ import annotations

import click

from slmk.api.cli import State, cache_dir_option, emit_json, installer_cache, json_option, pass_state


@click.command()
@cache_dir_option
@json_option
@pass_state
def repair(state: State, cache_dir, as_json: bool) -> None:
    """Finish what an interrupted install or remove left in the Foundry Local cache.

    Deletes unfinished copies, registers installs the Foundry Local v2 catalog misses
    and drops registrations of removed models. `slmk list` shows which installs need it;
    `slmk install` does the same first thing under its lock.
    """
    from . import installer

    settings = state.settings({"install.cache_dir": cache_dir})
    cache = installer_cache(settings)
    changes = installer.repair(cache, progress=state.progress(as_json))
    if as_json:
        emit_json({"cache": str(installer.locate(cache)), "changes": changes})
        return
    click.echo(f"# {installer.locate(cache)}")
    click.echo("\n".join(changes) if changes else "nothing to repair")
