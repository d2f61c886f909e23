"""The `slmk` command line: a thin click layer over slmk.app.

Each command parses its options, resolves settings (command line > environment >
slmk.toml > defaults), calls one kernel function and renders the result as text or,
with --json, as JSON on stdout. Errors become one line on stderr and a non-zero exit.

The kernel's own commands are the core verbs (inspect, init, config, convert,
install, list, remove, run, plugins, doctor); every other command comes from a plugin
through the ``slmk_commands`` hook, built-in features included (``template`` among them).
"""

from __future__ import annotations

import os
import sys

import click

from .. import __version__
from ..errors import PluginInterrupted, SlmkError, contain_plugin_failure
from ..plugins import get_registry
from .build import config, convert, init, inspect
from .models import install, list_, remove, run
from .options import State
from .system import doctor, plugins

# Every tool slmk drives reads these at import time; slmk keeps telemetry off unless
# the user set them explicitly.
TELEMETRY_OFF = {
    "ORT_DISABLE_TELEMETRY": "1",
    "OLIVE_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}

CORE_COMMANDS = (config, convert, doctor, init, inspect, install, list_, plugins, remove, run)


class SlmkGroup(click.Group):
    """The core commands plus those plugins contribute as ``Command`` records.

    A plugin command is loaded (its ``load()`` called) only when it runs or shows its
    own help. One named like a core command is refused and reported, never silently
    dropped or allowed to replace the core command.
    """

    def _plugin_commands(self, ctx: click.Context | None = None) -> dict:
        records = dict(get_registry().commands)
        for name in list(records):
            if name in self.commands:
                get_registry().refuse_command(name, "a built-in command has that name")
                records.pop(name)
        return records

    def list_commands(self, ctx):
        """Core and plugin command names, sorted."""
        return sorted(set(super().list_commands(ctx)) | set(self._plugin_commands(ctx)))

    def get_command(self, ctx, name):
        """A core command, or a plugin's, loaded now; None for an unknown name."""
        command = super().get_command(ctx, name)
        if command is not None:
            return command
        record = self._plugin_commands(ctx).get(name)
        if record is None:
            return None
        try:
            loaded = record.load()
        except BaseException as exc:
            owner = get_registry().owner("slmk_commands", name)
            contain_plugin_failure(exc, owner, f"loading command {name!r}")
            raise SlmkError(
                f"the command {name!r} of plugin {owner!r} failed to load: {type(exc).__name__}: {exc}",
                hint=f"fix or uninstall the plugin, or SLMK_DISABLE_PLUGINS={owner}",
            ) from None
        if not isinstance(loaded, click.Command):
            raise SlmkError(f"the command {name!r} loaded {type(loaded).__name__}, not a click command")
        return loaded

    def format_commands(self, ctx, formatter):
        # plugin commands show their record's summary, without being loaded
        """The help's command list, plugin commands with their record's summary."""
        rows = []
        records = self._plugin_commands(ctx)
        for name in self.list_commands(ctx):
            if name in self.commands:
                rows.append((name, self.commands[name].get_short_help_str(limit=formatter.width - 6 - len(name))))
            elif name in records:
                rows.append((name, records[name].summary))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=SlmkGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="slmk")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option(
    "--config", "config", type=click.Path(dir_okay=False), help="slmk.toml to use (default: ./slmk.toml, $SLMK_CONFIG)."
)
@click.pass_context
def cli(ctx: click.Context, debug: bool, quiet: bool, config: str | None) -> None:
    """slmk: take a fine-tuned small language model to a tested ONNX deployment in Foundry Local.

    \b
    Start here:   slmk demo              (the embedded tiny model, end to end)
    Your model:   slmk init MODEL_DIR && slmk deploy
    Step by step: slmk inspect, convert, install, run, bench, validate
    """
    ctx.obj = State(debug, quiet, config)
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)


for _command in CORE_COMMANDS:
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one clear line and a non-zero exit for every error."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="slmk", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:  # click turns Ctrl-C into Abort
        source = exc if isinstance(exc, PluginInterrupted) else exc.__cause__ or exc.__context__
        where = f" in {source}" if isinstance(source, PluginInterrupted) else ""
        click.echo(f"interrupted{where}: nothing half-written was left under a final name", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        # one line, like every other error; the command's --help has the details
        command = exc.ctx.command_path if exc.ctx else "slmk"
        click.echo(f"error: {exc.format_message()} (see `{command} --help`)", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except SlmkError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        click.echo(f"error: {exc.one_line()}", err=True)
        sys.exit(exc.exit_code)
    except OSError as exc:  # a full disk, a permission: the OS's one line, not a traceback
        if debug:
            raise
        click.echo(f"error: {_os_error(exc)}", err=True)
        sys.exit(1)
    except Exception as exc:  # a bug: still one line, the traceback with --debug
        if debug:
            raise
        click.echo(f"error: internal error: {type(exc).__name__}: {exc} (rerun with --debug and report it)", err=True)
        sys.exit(3)


def _os_error(exc: OSError) -> str:
    """An OSError as one short line; shutil's copytree packs a list of every failed file into it."""
    import errno

    if exc.errno == errno.ENOSPC:
        return "no space left on the device (free some disk space and retry; nothing half-written was kept)"
    what = exc.strerror or type(exc).__name__
    where = f": {exc.filename}" if exc.filename else ""
    if not exc.strerror and exc.args and isinstance(exc.args[0], list):  # shutil.Error([(src, dst, why), ...])
        first = exc.args[0][0] if exc.args[0] else ("", "", "")
        return f"copying failed for {len(exc.args[0])} file(s), first {first[0]}: {first[2]}"
    return f"{what}{where}"
