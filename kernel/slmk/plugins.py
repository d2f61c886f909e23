"""Discover, isolate and query plugins.

Built-in and third-party plugins are found the same way: the ``slmk`` entry-point
group. A plugin that fails to import, to register, or inside a hook is recorded
(name + error) and skipped; it never takes the CLI down, not even by calling
``sys.exit`` or raising GeneratorExit or another BaseException. Only an interrupt goes
through, as ``PluginInterrupted`` naming the plugin (the CLI exits 130, as for Ctrl-C).

Names are first come, built-ins first: an entry point, record or command whose
name a built-in (the ``slmk`` distribution's own plugins) already has is refused,
and so is the second of two third-party ones with one name. Each refusal is
recorded on the plugin that lost, so ``slmk plugins`` and ``slmk doctor`` show it.

Environment:
  SLMK_DISABLE_PLUGINS=a,b         skip these entry points
  SLMK_LOAD_PLUGINS=a,b            load only these entry points
  SLMK_DISABLE_PLUGIN_AUTOLOAD=1   load no entry point (tests register by hand)
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar, overload

import pluggy

from . import PROJECT, hookspecs
from .errors import PluginError, SlmkError, UsageError, contain_plugin_failure
from .records import (
    RECORD_TYPES,
    BuildCheck,
    BuildPipeline,
    Command,
    Converter,
    ExecutionProvider,
    Executor,
    Installer,
    ModelFamily,
    ModelSource,
    Probe,
    PromptTemplate,
    Quantizer,
    Runtime,
    Setting,
    TemplateEngine,
)

R = TypeVar("R")


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
    builtin: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The info as JSON-ready data."""
        return {
            "name": self.name,
            "module": self.module,
            "distribution": self.distribution,
            "version": self.version,
            "builtin": self.builtin,
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


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit: called sys.exit({exc.code!r})"
    return f"{type(exc).__name__}: {exc}"


class _Records(Generic[R]):
    """A typed, read-only view of one hook's records on a registry: ``registry.runtimes`` is
    ``registry.records("slmk_runtimes")`` as ``dict[str, Runtime]``."""

    def __init__(self, hook_name: str) -> None:
        self.hook_name = hook_name

    def __set_name__(self, owner: type, name: str) -> None:
        self.__doc__ = f"The {name.replace('_', ' ')} plugins contribute, by name (hook {self.hook_name})."

    @overload
    def __get__(self, registry: None, owner: type) -> _Records[R]: ...
    @overload
    def __get__(self, registry: Registry, owner: type) -> dict[str, R]: ...
    def __get__(self, registry: Registry | None, owner: type) -> dict[str, R] | _Records[R]:
        return self if registry is None else registry.records(self.hook_name)


class Registry:
    """A plugin manager plus the records its plugins contribute, collected once."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        self._records: dict[str, dict[str, tuple[str, Any]]] = {}

    # ------------------------------------------------------------------ loading
    def register(
        self,
        plugin: object,
        name: str | None = None,
        *,
        distribution: str = "",
        version: str = "",
        builtin: bool = False,
    ) -> None:
        """Register a plugin object or module (tests use this directly)."""
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        info = self.info.setdefault(name, PluginInfo(name=name))
        info.module = getattr(plugin, "__name__", type(plugin).__name__)
        info.distribution, info.version, info.builtin = distribution, version, builtin
        try:
            self.pm.register(plugin, name=name)
        except BaseException as exc:  # a bad hookimpl signature, a duplicate name ...
            contain_plugin_failure(exc, name, "registering it")
            info.loaded = False
            info.errors.append(f"register: {_describe(exc)}")
            return
        info.hooks = sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or [])
        self._records.clear()

    def load_entrypoints(self) -> None:
        """Load every plugin of the ``slmk`` entry-point group, honouring the env vars."""
        if os.environ.get("SLMK_DISABLE_PLUGIN_AUTOLOAD"):
            return
        from importlib_metadata import entry_points

        only = _env_names("SLMK_LOAD_PLUGINS")
        disabled = _env_names("SLMK_DISABLE_PLUGINS") or set()
        found = list(entry_points(group=PROJECT))
        # built-ins first, so a third party can never take a built-in's name
        found.sort(key=lambda e: (getattr(e.dist, "name", "") != PROJECT, e.name))
        taken: dict[str, str] = {}
        for ep in found:
            dist = getattr(ep, "dist", None)
            dist_name, dist_version = (dist.name, dist.version) if dist else ("", "")
            builtin = dist_name == PROJECT
            if ep.name in taken:
                if taken[ep.name] == dist_name:  # the same distribution found twice on sys.path
                    continue
                key = f"{ep.name} ({dist_name})"
                self.info[key] = PluginInfo(
                    name=key,
                    module=ep.value,
                    distribution=dist_name,
                    version=dist_version,
                    loaded=False,
                    errors=[
                        f"not loaded: the entry-point name {ep.name!r} is already used by "
                        f"{taken[ep.name] or 'another plugin'}; rename the entry point"
                    ],
                )
                continue
            taken[ep.name] = dist_name
            common = {
                "name": ep.name,
                "module": ep.value,
                "distribution": dist_name,
                "version": dist_version,
                "builtin": builtin,
            }
            if ep.name in disabled or (only is not None and ep.name not in only):
                reason = "disabled by SLMK_DISABLE_PLUGINS" if ep.name in disabled else "not in SLMK_LOAD_PLUGINS"
                self.info[ep.name] = PluginInfo(**common, loaded=False, errors=[reason])
                continue
            try:
                plugin = ep.load()
            except BaseException as exc:  # a plugin must not end slmk, not even by sys.exit
                contain_plugin_failure(exc, ep.name, f"importing {ep.value}")
                self.info[ep.name] = PluginInfo(**common, loaded=False, errors=[f"import: {_describe(exc)}"])
                continue
            self.register(plugin, ep.name, distribution=dist_name, version=dist_version, builtin=builtin)
        for var, names in (("SLMK_LOAD_PLUGINS", only), ("SLMK_DISABLE_PLUGINS", disabled)):
            unknown = sorted((names or set()) - set(taken))
            if unknown:
                raise UsageError(
                    f"{var} names plugins that are not installed: {', '.join(unknown)}",
                    hint=f"installed plugins (entry-point names): {', '.join(sorted(taken)) or 'none'}; "
                    f"fix or unset {var}",
                )

    # ------------------------------------------------------------------ records
    def _collect(self, hook_name: str) -> dict[str, tuple[str, Any]]:
        """Call one hook plugin by plugin, so one failure does not hide the others."""
        if hook_name in self._records:
            return self._records[hook_name]
        record_type = RECORD_TYPES[hook_name]
        found: dict[str, tuple[str, Any]] = {}
        hook = getattr(self.pm.hook, hook_name)
        impls = list(hook.get_hookimpls())  # registration order ...
        impls.sort(key=lambda impl: not self._is_builtin(impl.plugin_name))  # ... built-ins first
        for impl in impls:
            plugin_name = impl.plugin_name
            info = self.info.setdefault(plugin_name, PluginInfo(name=plugin_name))
            try:
                records = list(impl.function() or [])
                for record in records:
                    if not isinstance(record, record_type):
                        raise TypeError(f"returned {type(record).__name__}, expected {record_type.__name__}")
            except BaseException as exc:
                contain_plugin_failure(exc, plugin_name, f"in hook {hook_name}")
                info.errors.append(PluginError(plugin_name, hook_name, _describe(exc)).message)
                continue
            for record in records:
                owner = found.get(record.name, (None,))[0]
                if owner is not None and owner != plugin_name:
                    info.errors.append(
                        f"{record_type.__name__} {record.name!r} not used: {owner!r} already defines it "
                        f"(disable one of them with SLMK_DISABLE_PLUGINS)"
                    )
                    continue
                found[record.name] = (plugin_name, record)
                info.records.setdefault(hook_name, []).append(record.name)
        self._records[hook_name] = found
        return found

    def _is_builtin(self, plugin_name: str) -> bool:
        info = self.info.get(plugin_name)
        return bool(info and info.builtin)

    def records(self, hook_name: str) -> dict[str, Any]:
        """Every record one hook returned, by name (the winner of each name)."""
        return {name: record for name, (_, record) in self._collect(hook_name).items()}

    def owner(self, hook_name: str, record_name: str) -> str:
        """The plugin that contributed the record ``record_name`` of ``hook_name``."""
        return self._collect(hook_name)[record_name][0]

    probes = _Records[Probe]("slmk_probes")
    execution_providers = _Records[ExecutionProvider]("slmk_execution_providers")
    model_families = _Records[ModelFamily]("slmk_model_families")
    converters = _Records[Converter]("slmk_converters")
    quantizers = _Records[Quantizer]("slmk_quantizers")
    installers = _Records[Installer]("slmk_installers")
    runtimes = _Records[Runtime]("slmk_runtimes")
    executors = _Records[Executor]("slmk_executors")
    model_sources = _Records[ModelSource]("slmk_model_sources")
    commands = _Records[Command]("slmk_commands")
    settings = _Records[Setting]("slmk_settings")
    build_checks = _Records[BuildCheck]("slmk_build_checks")
    template_engines = _Records[TemplateEngine]("slmk_template_engines")
    build_pipelines = _Records[BuildPipeline]("slmk_build_pipelines")

    def model_source(self, path: str | Path) -> ModelSource | None:
        """The source that claims ``path`` (first by name), or None for a plain model folder."""
        for _, source in sorted(self.model_sources.items()):
            try:
                if source.detect(Path(path)):
                    return source
            except BaseException as exc:  # a broken detector must not hide the folder
                contain_plugin_failure(exc, self.owner("slmk_model_sources", source.name), "detecting a model source")
                continue
        return None

    def model_family(self, info: Any) -> ModelFamily | None:
        """The family that scores highest for a model (ModelInfo; ties: by name), or None."""
        best_score, chosen = 0, None
        for name, family in sorted(self.model_families.items()):
            try:
                score = int(family.match(info) or 0)
            except BaseException as exc:  # a broken family plugin must not stop the others
                contain_plugin_failure(exc, self._family_plugin(name), f"family {name!r} matching a model")
                continue
            if score > best_score:
                best_score, chosen = score, family
        return chosen

    def family_prompt_template(self, family: ModelFamily, info: Any) -> PromptTemplate:
        """``family.prompt_template(info)``, checked: a plugin that raises or returns something
        else than a PromptTemplate is one line naming the family and its plugin."""
        plugin = self._family_plugin(family.name)
        try:
            template = family.prompt_template(info)
        except SlmkError:
            raise
        except BaseException as exc:  # a plugin bug: name the plugin, keep the one-line error
            contain_plugin_failure(exc, plugin, f"family {family.name!r} giving a prompt template")
            detail = f"raised {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        else:
            if isinstance(template, PromptTemplate):
                return template
            detail = f"returned {type(template).__name__}, not a PromptTemplate"
        raise SlmkError(
            f"family {family.name!r} of plugin {plugin!r} failed to give a prompt template: {detail}",
            hint=f"fix or disable the plugin (SLMK_DISABLE_PLUGINS={plugin}), or pass --template FILE",
        )

    def _family_plugin(self, name: str) -> str:
        try:
            return self.owner("slmk_model_families", name)
        except KeyError:  # a family handed in directly, not through a hook
            return "?"

    def get(self, hook_name: str, name: str | None = None, what: str | None = None) -> Any:
        """One record by name (an execution provider also by alias, "gpu" -> "cuda"; None: the
        default, see ``default_name``), or a one-line error naming ``what`` it looked for (default:
        from the record type) and the names there are."""
        records = self.records(hook_name)
        what = what or re.sub(r"(?<!^)(?=[A-Z])", " ", RECORD_TYPES[hook_name].__name__).lower()
        if name is None:
            name = self.default_name(hook_name)
            if name is None:
                raise SlmkError(f"no {what} is installed", hint="`slmk plugins` lists what the plugins contribute")
        if name in records:
            return records[name]
        for record in records.values():
            if isinstance(record, ExecutionProvider) and name in record.aliases:
                return record
        known = ", ".join(sorted(records)) or "none"
        raise SlmkError(f"unknown {what} {name!r}", hint=f"known: {known}; `slmk plugins` lists who provides what")

    def default_name(self, hook_name: str) -> str | None:
        """The name of the record with the highest ``priority`` (ties: by name), e.g. the
        installer or runtime used when slmk.toml names none; None when there is none."""
        records = self.records(hook_name)
        if not records:
            return None
        return min(records, key=lambda name: (-records[name].priority, name))

    def refuse_command(self, name: str, reason: str) -> None:
        """Record that the plugin command ``name`` was not added (it shadows a built-in command)."""
        owner = self._collect("slmk_commands").get(name, (None,))[0]
        if owner is not None:
            message = f"command {name!r} not added: {reason}"
            errors = self.info.setdefault(owner, PluginInfo(name=owner)).errors
            if message not in errors:
                errors.append(message)

    def collect_all(self) -> None:
        """Call every hook once so that ``info`` holds every record and hook error."""
        for hook_name in RECORD_TYPES:
            self._collect(hook_name)

    def plugin_infos(self) -> Iterable[PluginInfo]:
        """Every plugin seen (loaded or not), by name."""
        return sorted(self.info.values(), key=lambda i: i.name)

    def problems(self) -> list[tuple[str, str]]:
        """(plugin, error) for every load, hook and name problem, not counting plugins switched off on purpose."""
        self.collect_all()
        return [
            (info.name, error)
            for info in self.plugin_infos()
            for error in info.errors
            if info.loaded or not error.startswith(("disabled", "not in"))
        ]


def make_registry(*plugins: object | str) -> Registry:
    """A registry with exactly these plugins: modules/objects, or entry-point names."""
    registry = Registry()
    from importlib_metadata import entry_points

    by_name = {ep.name: ep for ep in entry_points(group=PROJECT)}
    builtin_modules = {ep.value for ep in by_name.values() if ep.dist and ep.dist.name == PROJECT}
    for plugin in plugins:
        if isinstance(plugin, str):
            if plugin not in by_name:
                raise LookupError(f"no slmk entry point named {plugin!r}; installed: {', '.join(sorted(by_name))}")
            ep = by_name[plugin]
            registry.register(
                ep.load(),
                ep.name,
                builtin=bool(ep.dist and ep.dist.name == PROJECT),
                distribution=ep.dist.name if ep.dist else "",
                version=ep.dist.version if ep.dist else "",
            )
        else:
            registry.register(plugin, builtin=getattr(plugin, "__name__", None) in builtin_modules)
    return registry


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
    """Forget the process-wide registry (it is loaded again on next use)."""
    global _default
    _default = None
