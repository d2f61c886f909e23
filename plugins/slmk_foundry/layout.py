"""Where Foundry Local keeps models, and how slmk lays an installed model out there.

One layout serves both Foundry Local generations:

``<cache>/slmk/<name>-<device suffix>-<version>/v<version>/``

- the legacy ``foundry`` CLI (Windows/macOS, <= 0.8) scans its cache recursively
  for folders holding ``genai_config.json`` and an ``inference_model.json`` whose
  ``Name`` it lists and runs (``foundry model run <name>``);
- Foundry Local v2 keeps downloaded catalog models as
  ``<cache>/<Publisher>/<id name>-<version>/v<version>/`` (e.g.
  ``Microsoft/qwen2.5-0.5b-instruct-generic-cpu-4/v4``); slmk mirrors that with the
  publisher folder ``slmk``, and registers the leaf in the SDK's local catalog as
  ``<name>-<device suffix>:<version>`` (a folder dropped into the cache is scanned
  but never listed by the local catalog).

Both generations skip a folder holding ``download.tmp`` (an unfinished download);
slmk stages installs with that marker so no scanner ever sees a half model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmk.api import ExecutionProvider, UsageError
from slmk.api.files import is_temp_name

#: slmk's publisher folder inside the Foundry cache: everything slmk writes lives under it.
PUBLISHER = "slmk"
#: The file both Foundry generations read: the model's name and legacy prompt template.
INFERENCE_MODEL = "inference_model.json"
#: What slmk records about an install (Foundry ignores it).
INSTALL_RECORD = "slmk_install.json"
#: Foundry's own "download in progress" marker: a folder holding it is not a model yet.
MARKER = "download.tmp"
#: The lock that serialises slmk's installs and removals in one cache.
LOCK_NAME = ".slmk-install.lock"
#: Environment variable naming the cache (after --cache-dir and slmk.toml install.cache_dir).
CACHE_ENV = "SLMK_FOUNDRY_CACHE"
#: The legacy CLI's default cache on every platform (Foundry v2 apps pass theirs explicitly).
DEFAULT_CACHE = Path("~/.foundry/cache/models")
#: The pieces of a legacy PromptTemplate.
TEMPLATE_KEYS = ("system", "user", "assistant", "prompt")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
_CACHE_LOCATION_TIMEOUT_S = 15.0


# ------------------------------------------------------------------ cache location
def locate(cache_dir: Path | str | None = None) -> Path:
    """The Foundry Local cache slmk installs into.

    In order: ``cache_dir`` (the CLI passes ``--cache-dir``, else slmk.toml
    ``install.cache_dir``), ``$SLMK_FOUNDRY_CACHE``, what ``foundry cache location``
    prints when a ``foundry`` executable is on PATH, and ``~/.foundry/cache/models``.
    """
    if cache_dir:
        return _folder(Path(cache_dir).expanduser().absolute(), "the Foundry cache")
    env = os.environ.get(CACHE_ENV)
    if env:
        return _folder(Path(env).expanduser().absolute(), CACHE_ENV)
    from_cli = cache_location_from_cli()
    if from_cli is not None:
        return _folder(from_cli, "the Foundry cache (from `foundry cache location`)")
    return _folder(DEFAULT_CACHE.expanduser().absolute(), "the Foundry cache")


def _folder(path: Path, what: str) -> Path:
    """A cache that exists but is not a folder would read as empty: refuse it in one line."""
    if os.path.lexists(path) and not path.is_dir():
        raise UsageError(f"{what} {path} is not a folder", hint="point it at a folder (it is created when missing)")
    return path


def cache_location_from_cli(executable: str = "foundry") -> Path | None:
    """Ask the installed ``foundry`` CLI where its cache is; None when there is no CLI or no answer."""
    found = shutil.which(executable)
    if not found:
        return None
    try:
        result = subprocess.run(
            [found, "cache", "location"],
            capture_output=True,
            text=True,
            timeout=_CACHE_LOCATION_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return parse_cache_location(result.stdout)


def parse_cache_location(output: str) -> Path | None:
    """The folder in ``foundry cache location`` output.

    The legacy CLI prints ``💾 Cache directory path: C:\\Users\\me\\.foundry\\cache\\models``
    (and may print service lines around it); newer ones print the bare path.
    """
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        match = re.search(r"(?:path|location|directory)\s*:\s*(.+)$", line, re.IGNORECASE)
        if match:
            return Path(match.group(1).strip().strip("'\"")).expanduser()
    for line in reversed(lines):
        candidate = line.strip("'\"")
        if os.path.isabs(candidate) or re.match(r"^[A-Za-z]:[\\/]", candidate) or candidate.startswith("~"):
            return Path(candidate).expanduser()
    return None


# ------------------------------------------------------------------ names
def validate_name(name: str) -> str:
    """A model name that is safe as a folder name and a Foundry model id."""
    hint = "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit, e.g. --name my-model"
    if not isinstance(name, str) or not name:
        raise UsageError("no model name given", hint=hint)
    if "/" in name or "\\" in name or ".." in name:
        raise UsageError(f"model name {name!r} contains a path separator or '..'", hint=hint)
    if not _NAME.fullmatch(name):
        raise UsageError(f"model name {name!r} is not allowed", hint=hint)
    if name.split(".")[0].upper() in _WINDOWS_RESERVED:
        raise UsageError(f"model name {name!r} is reserved on Windows", hint=hint)
    return name


#: Foundry Local's variant suffix for each slmk execution provider (its DirectML and WebGPU builds are "generic-gpu").
FOUNDRY_SUFFIX = {"cpu": "generic-cpu", "cuda": "cuda-gpu", "dml": "generic-gpu", "webgpu": "generic-gpu"}


def foundry_suffix(ep: ExecutionProvider) -> str:
    """Foundry Local's variant suffix for ``ep``; a one-line UsageError when Foundry Local has none."""
    return ep.tool_name(FOUNDRY_SUFFIX, "Foundry Local")


def foundry_id(name: str, suffix: str, version: int | str) -> str:
    """The Foundry Local v2 model id: ``my-model-generic-cpu:1`` (the suffix picks the EP)."""
    return f"{name}-{suffix}:{version}"


def publisher_dir(cache: Path) -> Path:
    return Path(cache) / PUBLISHER


def model_dir_name(name: str, suffix: str, version: int | str) -> str:
    return f"{name}-{suffix}-{version}"


def leaf_of(model_dir: Path, version: int | str) -> Path:
    return Path(model_dir) / f"v{version}"


def is_tmp(path: Path) -> bool:
    return is_temp_name(path.name)


# ------------------------------------------------------------------ records
@dataclass(frozen=True)
class Entry:
    """One installed model as found on disk: ``leaf`` is the folder runtimes load."""

    leaf: Path
    record: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.record["name"])

    @property
    def version(self) -> int:
        return int(self.record["version"])

    @property
    def model_dir(self) -> Path:
        return self.leaf.parent

    @property
    def foundry_id(self) -> str:
        return str(self.record["foundry_id"])


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_visible_leaf(leaf: Path) -> bool:
    """What both Foundry generations treat as a model folder."""
    return (
        (leaf / "genai_config.json").is_file() and (leaf / INFERENCE_MODEL).is_file() and not (leaf / MARKER).exists()
    )


def read_entry(leaf: Path) -> Entry | None:
    """The installed model in ``leaf``, or None when it is not a complete slmk install."""
    if not is_visible_leaf(leaf):
        return None
    record = read_json(leaf / INSTALL_RECORD)
    if not record or not {"name", "version", "foundry_id"} <= set(record):
        return None
    try:
        int(record["version"])
    except (TypeError, ValueError):
        return None
    return Entry(leaf=leaf, record=record)


def _all_entries(cache: Path) -> list[Entry]:
    root = publisher_dir(cache)
    if not root.is_dir():
        return []
    found = []
    for model_dir in root.iterdir():
        if is_tmp(model_dir) or not model_dir.is_dir():
            continue
        for leaf in model_dir.glob("v*"):
            entry = read_entry(leaf)
            if entry is not None:
                found.append(entry)
    return found


def _newest_first(entries: list[Entry]) -> list[Entry]:
    return sorted(entries, key=lambda e: str(e.record.get("installed_at", "")), reverse=True)


def scan(cache: Path) -> list[Entry]:
    """Every complete slmk install in the cache, ordered by name then version.

    Of two copies of one version (a forced replace interrupted before it dropped
    the old copy) only the newer counts.
    """
    newest: dict[tuple[str, int], Entry] = {}
    for entry in _newest_first(_all_entries(cache)):
        newest.setdefault((entry.name, entry.version), entry)
    return sorted(newest.values(), key=lambda e: (e.name, e.version))


def duplicates(cache: Path) -> list[Entry]:
    """The older copies ``scan`` hides."""
    shown = {e.leaf for e in scan(cache)}
    return [e for e in _all_entries(cache) if e.leaf not in shown]


def leaves_with_marker(cache: Path) -> list[Path]:
    """Final-named model folders whose install never committed (the marker is still there)."""
    root = publisher_dir(cache)
    if not root.is_dir():
        return []
    return [
        model_dir
        for model_dir in root.iterdir()
        if not is_tmp(model_dir)
        and model_dir.is_dir()
        and any((leaf / MARKER).exists() for leaf in model_dir.glob("v*"))
    ]
