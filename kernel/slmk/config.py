"""slmk.toml: one file of settings, with command line > environment > file > defaults.

Keys are dotted (``quantization.block_size``); the environment variable of a key is
``SLMK_`` + the key in upper case with ``.`` as ``__`` (``SLMK_QUANTIZATION__BLOCK_SIZE``).
Unknown keys and bad values are errors that name the key and what is allowed.
"""

from __future__ import annotations

import math
import os
import stat
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .genai_format import MAX_CONTEXT_LENGTH, MAX_TOP_K, SEARCH_LIMITS
from .records import PRECISIONS, Setting

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10
    import tomli as tomllib

CONFIG_FILE = "slmk.toml"


SETTINGS: tuple[Setting, ...] = (
    Setting("model", str, None, "the Hugging Face model folder to deploy"),
    Setting("precision", str, "int4", "target precision", choices=PRECISIONS),
    Setting("execution_provider", str, "cpu", "hardware to build and run for (`slmk plugins` lists them)"),
    Setting("converter", str, "auto", "converter plugin to use, or auto to let the planner choose"),
    Setting("output", str, None, "folder the build is written to"),
    Setting("name", str, None, "name the model is installed under"),
    # default: the installer / runtime record with the highest priority (`slmk plugins` shows them)
    Setting("installer", str, None, "installer plugin [default: the installed plugins' preferred one]"),
    Setting("runtime", str, None, "runtime plugin for run, bench and validate [default: the preferred one]"),
    Setting("cache_dir", str, None, "slmk's step cache (default: $XDG_CACHE_HOME/slmk)"),
    Setting("trust_remote_code", bool, False, "allow model code from the model folder to run"),
    Setting("install.cache_dir", str, None, "the installer's cache folder [default: the installer's own]"),
    # the algorithms come from the converters' and quantizers' records: the planner checks the name
    Setting("quantization.algorithm", str, "default", "weight quantization algorithm (`slmk plugins` lists them)"),
    # unset: the converter's default for the precision (the model builder: 32 at int4, 128 at int8)
    Setting(
        "quantization.block_size",
        int,
        None,
        "int4/int8 block size [default: the converter's; the model builder's: 32 at int4, 128 at int8]",
        choices=(16, 32, 64, 128, 256),
    ),
    Setting("quantization.accuracy_level", int, 4, "int4 MatMul accuracy level", choices=(0, 1, 2, 3, 4)),
    Setting("quantization.is_symmetric", bool, True, "symmetric int4 quantization"),
    Setting("quantization.calibration", str, None, "JSONL or text file for calibrated quantization"),
    # bounded like a build's genai_config.json search (SEARCH_LIMITS): convert never writes what a runtime refuses
    Setting(
        "generation.max_length",
        int,
        None,
        "prompt + answer tokens at most",
        check=lambda v: 0 < v <= MAX_CONTEXT_LENGTH,
        check_help=f"in 1..{MAX_CONTEXT_LENGTH}",
    ),
    Setting("generation.do_sample", bool, None, "sample (true) or greedy (false)"),
    Setting(
        "generation.temperature",
        float,
        None,
        "sampling temperature",
        check=lambda v: 0 <= v <= SEARCH_LIMITS["temperature"][2],
        check_help=f"in 0..{SEARCH_LIMITS['temperature'][2]:g}",
    ),
    Setting(
        "generation.top_p", float, None, "nucleus sampling mass", check=lambda v: 0 < v <= 1, check_help="in (0, 1]"
    ),
    Setting(
        "generation.top_k",
        int,
        None,
        "sample from the k most likely tokens",
        check=lambda v: 0 <= v <= MAX_TOP_K,
        check_help=f"in 0..{MAX_TOP_K}",
    ),
    Setting(
        "generation.repetition_penalty",
        float,
        None,
        "penalty for repeated tokens",
        check=lambda v: 0 < v <= SEARCH_LIMITS["repetition_penalty"][2],
        check_help=f"in (0, {SEARCH_LIMITS['repetition_penalty'][2]:g}]",
    ),
)
SETTINGS_BY_KEY = {s.key: s for s in SETTINGS}
GENERATION_KEYS = tuple(s.key.split(".", 1)[1] for s in SETTINGS if s.key.startswith("generation."))


def _coerce(setting: Setting, value: Any, origin: str, *, text: bool = False) -> Any:
    """Turn a raw value into the setting's type.

    ``text``: the value came as text (an environment variable), so ``"yes"`` may mean
    true and ``"3"`` three; a TOML file or the Python API must give the real type.
    """
    if value is None:
        return None
    try:
        if setting.type is bool:
            if isinstance(value, str) and text:
                lowered = value.strip().lower()
                if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError
                value = lowered in ("1", "true", "yes", "on")
            elif not isinstance(value, bool):
                raise ValueError
        elif setting.type is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            if isinstance(value, str) and not text:
                raise ValueError
            value = int(value)
        elif setting.type is float:
            if isinstance(value, bool) or (isinstance(value, str) and not text):
                raise ValueError
            value = float(value)
            if not math.isfinite(value):  # nan passes every comparison a check makes
                raise ValueError
        elif setting.type is list:
            if not isinstance(value, list):
                raise ValueError
        else:
            if not isinstance(value, str):
                raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(
            f"{setting.key} = {value!r} from {origin} is not a valid {setting.type.__name__}",
            hint=f"{setting.key}: {setting.help}",
        ) from None
    if setting.choices is not None and value not in setting.choices:
        allowed = ", ".join(str(c) for c in setting.choices)
        raise ConfigError(f"{setting.key} = {value!r} from {origin} is not allowed", hint=f"allowed: {allowed}")
    if setting.check is not None and not setting.check(value):
        raise ConfigError(
            f"{setting.key} = {value!r} from {origin} is out of range", hint=f"must be {setting.check_help}"
        )
    return value


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _close_matches(key: str, known: Mapping[str, Setting] | None = None) -> str:
    import difflib

    matches = difflib.get_close_matches(key, known or SETTINGS_BY_KEY, n=3)
    return f"did you mean {', '.join(matches)}?" if matches else "`slmk config keys` lists the known keys"


class Settings:
    """Resolved settings; ``source(key)`` says where each value came from."""

    def __init__(self, values: dict[str, Any], sources: dict[str, str], path: Path | None):
        """Values and their sources by key; ``path`` is the slmk.toml read, if any."""
        self._values = values
        self._sources = sources
        self.path = path

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` when it is unset."""
        value = self._values.get(key)
        return default if value is None else value

    def source(self, key: str) -> str:
        """Where the value of ``key`` came from: command line, $VAR, a file, or default."""
        return self._sources.get(key, "default")

    def generation(self) -> dict[str, Any]:
        """The generation settings that are set, without the ``generation.`` prefix."""
        return {
            k: self._values[f"generation.{k}"]
            for k in GENERATION_KEYS
            if self._values.get(f"generation.{k}") is not None
        }

    def quantization(self) -> dict[str, Any]:
        """The quantization settings that are set, without the ``quantization.`` prefix."""
        return {
            s.key.split(".", 1)[1]: self._values[s.key]
            for s in SETTINGS
            if s.key.startswith("quantization.") and self._values.get(s.key) is not None
        }

    def table(self, name: str) -> dict[str, Any]:
        """The settings of one table (a plugin's ``serve.*``), without the prefix."""
        prefix = f"{name}."
        return {k[len(prefix) :]: v for k, v in self._values.items() if k.startswith(prefix)}

    def as_dict(self) -> dict[str, Any]:
        """Every value by key."""
        return dict(self._values)


#: slmk.toml is a few KB: reading stops past this, so a config path that is /dev/zero or a
#: huge file is refused instead of filling the memory.
CONFIG_MAX_BYTES = 1024**2


def _not_a_file(path: Path) -> str | None:
    """What ``path`` is when it exists but is not a regular file ("a folder", "a FIFO" ...)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:  # a link loop, a path through a file, no permission: say so, not "not found"
        return f"unreadable ({exc.strerror})"
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))  # fmt: skip
    for test, kind in kinds:
        if test(mode):
            return kind
    return None if stat.S_ISREG(mode) else "not a regular file"


def find_config_file(explicit: str | Path | None = None, *, origin: str = "--config") -> Path | None:
    """The slmk.toml to read: ``explicit``, else $SLMK_CONFIG, else ./slmk.toml if there."""
    if explicit:
        path = Path(explicit).expanduser()
        kind = _not_a_file(path)
        if kind:
            what = kind if kind.startswith("unreadable") else f"{kind}, not a file"
            raise ConfigError(f"config file {path} ({origin}) is {what}", hint=f"point {origin} at an slmk.toml")
        if not path.is_file():
            raise ConfigError(
                f"config file {path} ({origin}) not found", hint=f"pass an existing slmk.toml or drop {origin}"
            )
        return path
    env = os.environ.get("SLMK_CONFIG")
    if env:
        return find_config_file(env, origin="$SLMK_CONFIG")
    local = Path.cwd() / CONFIG_FILE
    return local if local.is_file() else None


def read_config_bytes(path: Path, what: str = CONFIG_FILE) -> bytes:
    """A config file's bytes: a regular file of at most CONFIG_MAX_BYTES. Opened without
    blocking, so a path swapped for a FIFO cannot hang slmk; a ConfigError otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", hint=f"pass a readable {what}") from None
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(f"{path} is {_not_a_file(path) or 'not a regular file'}, not a file")
        try:
            data = handle.read(CONFIG_MAX_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}", hint=f"pass a readable {what}") from None
    if len(data) > CONFIG_MAX_BYTES:
        raise ConfigError(
            f"{path} is larger than {CONFIG_MAX_BYTES // 1024**2} MiB, which no {what} is",
            hint=f"point at the right {what}",
        )
    return data


def read_toml(path: Path, what: str = CONFIG_FILE) -> dict[str, Any]:
    """A TOML file as a table; a file that is not TOML, not UTF-8, unreadable or not a regular
    file is a ConfigError.

    Every TOML file slmk reads (slmk.toml, a sweep file) comes through here, and its
    values through ``check_values``: one schema mechanism for all of them.
    """
    raw = read_config_bytes(Path(path), what)
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}", hint="fix the line it names") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not UTF-8 text: {exc.reason} at byte {exc.start}", hint=f"save {what} as UTF-8"
        ) from None
    except RecursionError:
        raise ConfigError(f"{path} nests its values too deeply", hint=f"{what} is a flat file of settings") from None


def check_values(flat: Mapping[str, Any], known: Mapping[str, Setting], origin: str) -> dict[str, Any]:
    """Dotted keys checked against a schema: each key known, each value of its type and in range.

    An unknown key or a bad value is a ConfigError naming the key and ``origin``.
    """
    import difflib

    for key in flat:
        if key not in known:
            table = key.rpartition(".")[0]
            matches = difflib.get_close_matches(key, list(known), n=3)
            siblings = sorted(k for k in known if k.rpartition(".")[0] == table)
            hint = f"did you mean {', '.join(matches)}?" if matches else f"known keys: {', '.join(siblings)}"
            raise ConfigError(f"unknown key {key!r} in {origin}", hint=hint)
    return {key: _coerce(known[key], value, origin) for key, value in flat.items()}


def read_config_file(path: Path, known: Mapping[str, Setting] | None = None) -> dict[str, Any]:
    """The file's keys, dotted; an unknown key or a file that is not TOML is a ConfigError."""
    known = known or SETTINGS_BY_KEY
    flat = _flatten(read_toml(path))
    for key in flat:
        if key not in known:
            raise ConfigError(f"unknown key {key!r} in {path}", hint=_close_matches(key, known))
    return flat


def all_settings(plugin_settings: Iterable[Setting] = ()) -> dict[str, Setting]:
    """The kernel's settings plus those plugins declare; a plugin may not redefine a kernel key."""
    known = dict(SETTINGS_BY_KEY)
    for setting in plugin_settings:
        if setting.key not in known and "." in setting.key:
            known[setting.key] = setting
    return known


def load_settings(
    cli: Mapping[str, Any] | None = None,
    config_path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    plugin_settings: Iterable[Setting] = (),
    defaults: Mapping[str, Any] | None = None,
) -> Settings:
    """Resolve every setting: command line > environment > file > defaults.

    ``defaults`` replaces declared defaults that depend on the plugins installed
    (the preferred installer and runtime).
    """
    environ = os.environ if environ is None else environ
    known = all_settings(plugin_settings)
    path = find_config_file(config_path)
    file_values = read_config_file(path, known) if path else {}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for setting in known.values():
        value, origin, text = (defaults or {}).get(setting.key, setting.default), "default", False
        if setting.key in file_values:
            value, origin = file_values[setting.key], str(path)
        if setting.env in environ:
            value, origin, text = environ[setting.env], f"${setting.env}", True
        if cli and cli.get(setting.key) is not None:
            value, origin, text = cli[setting.key], "command line", False
        values[setting.key] = _coerce(setting, value, origin, text=text)
        sources[setting.key] = origin
    return Settings(values, sources, path)
