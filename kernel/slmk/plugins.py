"""Discover, isolate and query plugins.

Built-in and third-party plugins are found the same way: the ``slmk`` entry-point
group. A plugin that fails to import, to register, or inside a hook is recorded
(name + error) and skipped; it never takes the CLI down.

Environment:
  SLMK_DISABLE_PLUGINS=a,b         skip these entry points
  SLMK_LOAD_PLUGINS=a,b            load only these entry points
  SLMK_DISABLE_PLUGIN_AUTOLOAD=1   load no entry point (tests register by hand)
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import click
import pluggy

from . import PROJECT, hookspecs
from .errors import PluginError, SlmkError
from .records import RECORD_TYPES as _RECORD_TYPES

RECORD_TYPES: dict[str, type] = {**_RECORD_TYPES, "slmk_cli_commands": click.Command}


@dataclass
class PluginInfo:
    """What ``slmk plugins`` shows about one plugin."""

    name: str
    module: str = ""
    distribution: str = ""
    version: str = ""
    hooks: list[str] = field(default_factory=list)
    records: dict[str, list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    loaded: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "distribution": self.distribution,
            "version": self.version,
            "loaded": self.loaded,
            "hooks": self.hooks,
            "records": self.records,
            "errors": self.errors,
        }


def _env_names(var: str) -> set[str] | None:
    value = os.environ.get(var)
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


class Registry:
    """A plugin manager plus the records its plugins contribute, collected once."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        self._records: dict[str, dict[str, tuple[str, Any]]] = {}

    # ------------------------------------------------------------------ loading
    def register(self, plugin: object, name: str | None = None, *, distribution: str = "", version: str = "") -> None:
        """Register a plugin object or module (tests use this directly)."""
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        info = self.info.setdefault(name, PluginInfo(name=name))
        info.module = getattr(plugin, "__name__", type(plugin).__name__)
        info.distribution, info.version = distribution, version
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:  # a bad hookimpl signature, a duplicate name ...
            info.loaded = False
            info.errors.append(f"register: {type(exc).__name__}: {exc}")
            return
        info.hooks = sorted(impl_caller.name for impl_caller in self.pm.get_hookcallers(plugin) or [])
        self._records.clear()

    def load_entrypoints(self) -> None:
        """Load every plugin of the ``slmk`` entry-point group, honouring the env vars."""
        if os.environ.get("SLMK_DISABLE_PLUGIN_AUTOLOAD"):
            return
        from importlib_metadata import entry_points

        only = _env_names("SLMK_LOAD_PLUGINS")
        disabled = _env_names("SLMK_DISABLE_PLUGINS") or set()
        seen: set[str] = set()
        for ep in sorted(entry_points(group=PROJECT), key=lambda e: e.name):
            if ep.name in seen:  # the same distribution found twice on sys.path
                continue
            seen.add(ep.name)
            dist = getattr(ep, "dist", None)
            dist_name = dist.name if dist else ""
            dist_version = dist.version if dist else ""
            if ep.name in disabled or (only is not None and ep.name not in only):
                self.info[ep.name] = PluginInfo(
                    name=ep.name,
                    module=ep.value,
                    distribution=dist_name,
                    version=dist_version,
                    loaded=False,
                    errors=["disabled by SLMK_DISABLE_PLUGINS" if ep.name in disabled else "not in SLMK_LOAD_PLUGINS"],
                )
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                self.info[ep.name] = PluginInfo(
                    name=ep.name,
                    module=ep.value,
                    distribution=dist_name,
                    version=dist_version,
                    loaded=False,
                    errors=[f"import: {type(exc).__name__}: {exc}"],
                )
                continue
            self.register(plugin, ep.name, distribution=dist_name, version=dist_version)

    # ------------------------------------------------------------------ records
    def _collect(self, hook_name: str) -> dict[str, tuple[str, Any]]:
        """Call one hook plugin by plugin, so one failure does not hide the others."""
        if hook_name in self._records:
            return self._records[hook_name]
        record_type = RECORD_TYPES[hook_name]
        found: dict[str, tuple[str, Any]] = {}
        conflicts: list[str] = []
        hook = getattr(self.pm.hook, hook_name)
        for impl in reversed(hook.get_hookimpls()):  # registration order
            plugin_name = impl.plugin_name
            info = self.info.setdefault(plugin_name, PluginInfo(name=plugin_name))
            try:
                records = list(impl.function() or [])
                for record in records:
                    if not isinstance(record, record_type):
                        raise TypeError(f"returned {type(record).__name__}, expected {record_type.__name__}")
            except Exception as exc:
                info.errors.append(str(PluginError(plugin_name, hook_name, exc).message))
                continue
            for record in records:
                if record.name in found and found[record.name][0] != plugin_name:
                    conflicts.append(
                        f"{record_type.__name__} {record.name!r} is defined by both "
                        f"{found[record.name][0]!r} and {plugin_name!r}"
                    )
                    continue
                found[record.name] = (plugin_name, record)
                info.records.setdefault(hook_name, []).append(record.name)
        if conflicts:
            raise SlmkError(
                "; ".join(conflicts),
                hint="disable one of them with SLMK_DISABLE_PLUGINS=<plugin name>",
            )
        self._records[hook_name] = found
        return found

    def records(self, hook_name: str) -> dict[str, Any]:
        return {name: record for name, (_, record) in self._collect(hook_name).items()}

    def owner(self, hook_name: str, record_name: str) -> str:
        return self._collect(hook_name)[record_name][0]

    @property
    def probes(self):
        return self.records("slmk_probes")

    @property
    def execution_providers(self):
        return self.records("slmk_execution_providers")

    @property
    def model_families(self):
        return self.records("slmk_model_families")

    @property
    def converters(self):
        return self.records("slmk_converters")

    @property
    def quantizers(self):
        return self.records("slmk_quantizers")

    @property
    def installers(self):
        return self.records("slmk_installers")

    @property
    def runtimes(self):
        return self.records("slmk_runtimes")

    @property
    def executors(self):
        return self.records("slmk_executors")

    @property
    def cli_commands(self):
        return self.records("slmk_cli_commands")

    def get(self, hook_name: str, name: str, what: str):
        """One record by name, or an error that lists the names there are."""
        records = self.records(hook_name)
        if name in records:
            return records[name]
        # execution providers also answer to their aliases ("gpu" -> "cuda")
        for record in records.values():
            if name in getattr(record, "aliases", ()):
                return record
        known = ", ".join(sorted(records)) or "none"
        raise SlmkError(f"unknown {what} {name!r}", hint=f"known: {known}; `slmk plugins` lists who provides what")

    def collect_all(self) -> None:
        """Call every hook once so that ``info`` holds every record and hook error."""
        for hook_name in RECORD_TYPES:
            try:
                self._collect(hook_name)
            except SlmkError as exc:
                self.info.setdefault("<conflict>", PluginInfo(name="<conflict>", loaded=False)).errors.append(
                    exc.one_line()
                )

    def plugin_infos(self) -> Iterable[PluginInfo]:
        return sorted(self.info.values(), key=lambda i: i.name)


_default: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry of entry-point plugins, loaded on first use."""
    global _default
    if _default is None:
        registry = Registry()
        registry.load_entrypoints()
        _default = registry
    return _default


def reset_registry() -> None:
    global _default
    _default = None
