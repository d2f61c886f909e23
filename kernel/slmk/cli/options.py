"""What every command shares: the state object, output helpers, common options.

Commands from plugins get these through ``slmk.api`` (``pass_state``, ``emit_json``,
``generation_options`` ...), so every command parses and prints the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..plugins import get_registry
from ..progress import Progress
from ..records import PRECISIONS, Setting

PRECISION_CHOICES = click.Choice(list(PRECISIONS))


class State:
    """What the ``slmk`` group passes to every command: --debug, --quiet, --config."""

    def __init__(self, debug: bool, quiet: bool, config: str | None):
        """The global options as given."""
        self.debug = debug
        self.quiet = quiet
        self.config = config

    def settings(self, cli: dict[str, Any] | None = None):
        """Every setting resolved (command line > environment > slmk.toml > default), plugins' too."""
        from ..config import load_settings

        registry = get_registry()
        defaults = {
            "installer": registry.default_name("slmk_installers"),
            "runtime": registry.default_name("slmk_runtimes"),
        }
        return load_settings(cli or {}, self.config, plugin_settings=registry.settings.values(), defaults=defaults)

    def progress(self, quiet: bool = False):
        """A Progress on stderr, silent with --quiet (or ``quiet``, e.g. for --json)."""
        return Progress(quiet=self.quiet or quiet)


pass_state = click.make_pass_decorator(State, ensure=True)


def emit_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout."""
    click.echo(json.dumps(data, indent=2, default=str))


def human_size(size: float) -> str:
    """1536 -> '1.5 KB'."""
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def json_option(f):
    """--json: print JSON on stdout instead of text."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(f)


def quiet_option(f):
    """-q/--quiet on a command (as well as on `slmk`)."""
    return click.option("-q", "--quiet", "quiet", is_flag=True, help="No progress output (also: slmk -q).")(f)


class RecordOption(click.Option):
    """An option that names a record (``--runtime``, ``--installer``): its help lists the names
    the plugins contribute and the default (slmk.toml's setting, else the record with the highest
    priority), read from the registry only when the help is shown."""

    def __init__(self, *args: Any, hook_name: str, setting: str, what: str, **kwargs: Any):
        kwargs.setdefault("metavar", "NAME")
        super().__init__(*args, **kwargs)
        self.hook_name, self.setting, self.what = hook_name, setting, what

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        """The help line with the names as the installed plugins have them."""
        registry = get_registry()
        names = ", ".join(sorted(registry.records(self.hook_name))) or "none installed"
        default = registry.default_name(self.hook_name) or "none"
        env = f"$SLMK_{self.setting.upper()}"
        self.help = f"{self.what}: {names} [default: {env}, slmk.toml {self.setting}, else {default}]."
        return super().get_help_record(ctx)


def installer_option(f):
    """--installer: which installer plugin installs, lists and removes models."""
    return click.option(
        "--installer", cls=RecordOption, hook_name="slmk_installers", setting="installer", what="Installer plugin"
    )(f)


def cache_dir_option(f):
    """--cache-dir: the installer's cache folder (each installer documents its own default)."""
    return click.option(
        "--cache-dir",
        type=click.Path(file_okay=False),
        help="The installer's cache folder (default: $SLMK_INSTALL__CACHE_DIR, slmk.toml install.cache_dir, "
        "else the installer's own default).",
    )(f)


def runtime_options(f):
    """--runtime and --ep: which runtime loads the model, on which execution provider."""
    f = click.option(
        "--ep", "execution_provider", help="Execution provider (default: the one the model was built for)."
    )(f)
    return click.option(
        "--runtime", cls=RecordOption, hook_name="slmk_runtimes", setting="runtime", what="Runtime plugin"
    )(f)


def generation_options(f):
    """--max-new-tokens, --temperature, --top-p, --top-k, --repetition-penalty, --greedy/--sample."""
    f = click.option("--max-new-tokens", type=click.IntRange(min=1), help="Answer tokens at most.")(f)
    f = click.option("--temperature", type=float, help="Sampling temperature, >= 0 (0: greedy).")(f)
    f = click.option("--top-p", type=float, help="Nucleus sampling mass, in (0, 1].")(f)
    f = click.option("--top-k", type=int, help="Sample from the k most likely tokens, >= 0.")(f)
    f = click.option("--repetition-penalty", type=float, help="Penalty for repeated tokens, > 0.")(f)
    return click.option("--greedy/--sample", "greedy", default=None, help="Greedy decoding or sampling.")(f)


def search_from(
    state: State, settings, max_new_tokens, temperature, top_p, top_k, repetition_penalty, greedy
) -> dict[str, Any]:
    """Generation options from the command line over slmk.toml's ``generation`` table.

    The command-line values are checked exactly as slmk.toml's are (a negative or
    non-finite temperature, top_p outside (0, 1] ... are one-line errors).
    """
    overrides = {
        "generation.temperature": temperature,
        "generation.top_p": top_p,
        "generation.top_k": top_k,
        "generation.repetition_penalty": repetition_penalty,
    }
    if greedy is not None:
        overrides["generation.do_sample"] = not greedy
    checked = state.settings(overrides) if any(v is not None for v in overrides.values()) else settings
    search = checked.generation()
    if max_new_tokens is not None:
        search["max_new_tokens"] = max_new_tokens
    return search


def installer_cache(settings) -> Path | None:
    """The installer cache from settings (install.cache_dir), or None for the installer's default."""
    value = settings["install.cache_dir"]
    return Path(value).expanduser() if value else None


class PluginOptionsCommand(click.Command):
    """A core command that also takes the flags plugins declare for it (``Setting.flag``).

    ``slmk_olive`` declares ``olive.config`` with ``--olive-config`` for ``convert``: the
    flag appears in ``slmk convert --help`` and its value reaches the callback in
    ``plugin_flags`` as ``{"olive.config": value}``.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._plugin_params: list[click.Parameter] | None = None
        self._keys: dict[str, list[str]] = {}

    def _plugin_options(self) -> list[click.Parameter]:
        if self._plugin_params is None:
            self._plugin_params = []
            by_flag: dict[str, list[Setting]] = {}
            for setting in sorted(get_registry().settings.values(), key=lambda s: s.key):
                if setting.flag and self.name in setting.commands and setting.flag.startswith("--"):
                    by_flag.setdefault(setting.flag, []).append(setting)
            # one flag may set the same switch of several plugins (--allow-pickle: every step that
            # reads pickles asks for it), when they agree on its type
            for flag, settings in by_flag.items():
                setting = settings[0]
                if any(other.type is not setting.type for other in settings):
                    settings = [setting]
                dest = "plugin__" + setting.key.replace(".", "__").replace("-", "_")
                self._keys[dest] = [s.key for s in settings]
                keys = ", ".join(s.key for s in settings)
                if setting.type is bool:  # a switch: present means true
                    option = click.Option(
                        [flag, dest], is_flag=True, flag_value=True, default=None, help=f"{setting.help} [{keys}]"
                    )
                else:
                    kind = click.Path() if setting.type is str else setting.type
                    option = click.Option([flag, dest], type=kind, default=None, help=f"{setting.help} [{keys}]")
                self._plugin_params.append(option)
        return self._plugin_params

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        """The command's own parameters plus the plugin flags, --help last."""
        params = super().get_params(ctx)
        return params[:-1] + self._plugin_options() + params[-1:]  # --help stays last

    def invoke(self, ctx: click.Context) -> Any:
        """Collect the plugin flags into ``plugin_flags`` and run the command."""
        self._plugin_options()
        flags: dict[str, Any] = {}
        for name in [name for name in ctx.params if name in self._keys]:
            value = ctx.params.pop(name)
            flags.update(dict.fromkeys(self._keys[name], value))
        ctx.params["plugin_flags"] = {key: value for key, value in flags.items() if value is not None}
        return super().invoke(ctx)
