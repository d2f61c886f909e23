"""The kernel's operations, shared by the CLI, tests and other front ends.

Each function takes plain values, does one job through the plugins, and returns a
result object the CLI renders (as text or --json).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from .builds import STATUS_NOT_VERIFIED, STATUS_SKIPPED, BuildResult, Plan
from .errors import PluginError, SlmkError, TemplateError, UsageError, call_plugin, contain_plugin_failure
from .modelinfo import ModelInfo
from .plugins import Registry, get_registry
from .progress import Progress
from .records import (
    FORMAT_HF,
    BuildPipeline,
    ChatSession,
    ConvertRequest,
    ExecutionProvider,
    LoadRequest,
    ProbeResult,
    Runtime,
)


def resolve_ep(registry: Registry, name: str) -> ExecutionProvider:
    """``registry.get("slmk_execution_providers", name)``, under the name plugins call it by."""
    return registry.get("slmk_execution_providers", name)


def _check_chat_template(folder: Path) -> None:
    """Render the build's chat template once through slmk's bounded template engine before a runtime
    does: the runtimes' own template engines have no time or memory limit, so a template that
    loops or explodes is refused here with one line instead of hanging the runtime."""
    from .api.templates import render_chat_template, special_tokens_for

    info = ModelInfo.load(folder)
    if info.chat_template:
        try:
            render_chat_template(
                info.chat_template, [{"role": "user", "content": "Hello"}], special_tokens=special_tokens_for(info)
            )
        except TemplateError as exc:
            raise type(exc)(f"{folder}: {exc.message}", exc.hint) from None


def run_doctor(registry: Registry | None = None) -> list[dict[str, Any]]:
    """Every probe, every execution provider's usability, every plugin problem: `slmk doctor` as data.

    Each finding: probe, name, status (ok, warn, fail), detail, fix. A probe that raises
    is a failure of its own, never the end of the run.
    """
    registry = registry or get_registry()
    results: list[dict[str, Any]] = []
    for name, probe in sorted(registry.probes.items()):
        try:
            findings = list(probe.check())
        except BaseException as exc:
            owner = registry.owner("slmk_probes", name)
            contain_plugin_failure(exc, owner, f"probe {name!r}")
            findings = [
                ProbeResult(
                    name,
                    "fail",
                    f"probe raised {type(exc).__name__}: {exc}",
                    fix=f"report this to the author of plugin {owner}",
                )
            ]
        results += [
            {"probe": name, "name": f.name, "status": f.status, "detail": f.detail, "fix": f.fix} for f in findings
        ]
    for name, ep in sorted(registry.execution_providers.items()):
        try:
            usability = ep.probe()
            status = "ok" if usability.usable else "warn"
            detail = ("usable: " if usability.usable else "not usable: ") + usability.reason
            fix = usability.fix
        except BaseException as exc:
            contain_plugin_failure(exc, registry.owner("slmk_execution_providers", name), f"probing {name}")
            status, detail, fix = "fail", f"probe raised {type(exc).__name__}: {exc}", ""
        results.append(
            {"probe": "execution-providers", "name": f"ep:{name}", "status": status, "detail": detail, "fix": fix}
        )
    for plugin, error in registry.problems():
        results.append(
            {
                "probe": "plugins",
                "name": f"plugin:{plugin}",
                "status": "warn",
                "detail": error,
                "fix": "fix or uninstall the plugin, or SLMK_DISABLE_PLUGINS=" + plugin.split(" ")[0],
            }
        )
    return results


def require_usable(ep: ExecutionProvider, action: str) -> None:
    """Stop with a clear message when the hardware for ``action`` is missing here."""
    owner = get_registry().owner("slmk_execution_providers", ep.name)
    usability = call_plugin(owner, f"probing execution provider {ep.name!r}", ep.probe)
    if not usability.usable:
        raise SlmkError(
            f"cannot {action} on {ep.name}: {usability.reason}",
            hint=usability.fix or f"`slmk doctor` shows what {ep.name} needs",
        )


def convert(
    model: str | Path | None, output: str | Path | None = None, *, registry: Registry | None = None, **fields: Any
) -> BuildResult | Plan:
    """Plan and build ``model`` into ``output``: ``fields`` are those of ConvertRequest
    (precision, execution_provider, via, options, quantization, calibration, force, ...).

    The keyword form of ``convert_request(ConvertRequest(model, output, **fields))``; an
    unknown field is a TypeError, as for any keyword argument.
    """
    paths = {key: Path(fields[key]) for key in ("calibration", "base", "cache_dir") if fields.get(key) is not None}
    request = ConvertRequest(
        model=Path(model) if model is not None else None,
        output=Path(output) if output is not None else None,
        **{**fields, **paths},
    )
    return convert_request(request, registry)


def convert_request(request: ConvertRequest, registry: Registry | None = None) -> BuildResult | Plan:
    """Plan and build ``request.model`` at its precision for its execution provider into ``request.output``.

    A folder a model source claims (a LoRA adapter) is materialized first (merged into
    ``base``, its own base when None); ``source_mode`` other than the first of the
    source's modes hands the whole request to the source (e.g. ``separate``).

    ``verify``: the build check a plugin contributes (``slmk_build_checks``; the built-in
    ``slmk_verify`` runs the source and the build on ``verify_prompts``) runs around the build
    and its verdict goes into slmk_build.json; with no check installed the build records why.
    False records that it was skipped.
    """
    registry = registry or get_registry()
    request = _with_selected_converter(request, registry)
    if request.model is None:
        raise UsageError(
            "no model folder given", hint="pass MODEL_DIR or set `model` in slmk.toml (slmk init MODEL_DIR)"
        )
    model = request.model
    source = registry.model_source(model)
    if source is not None:
        if request.output is None:
            output = Path(f"build/{model.resolve().name}-{request.precision}-{request.execution_provider}")
            request = replace(request, output=output)
        if request.source_mode and source.modes and request.source_mode != source.modes[0]:
            if source.convert is None:
                owner = registry.owner("slmk_model_sources", source.name)
                raise SlmkError(
                    f"model source {source.name!r} declares mode {request.source_mode!r} but no convert for it",
                    hint=f"a bug of plugin {owner}: report it to its author",
                )
            return source.convert(request)
        model = source.materialize(model, request.base, request.progress or Progress(quiet=True))
    elif request.base is not None or request.source_mode:
        raise UsageError(
            f"{model} is not an adapter folder: --base and --adapter-mode apply to adapters only",
            hint="drop them for a plain model folder",
        )
    info = ModelInfo.load(model)
    if info.format != FORMAT_HF:
        raise UsageError(f"{info.path} is already an ONNX build", hint="convert takes a Hugging Face model folder")
    ep = registry.get("slmk_execution_providers", request.execution_provider)
    if request.output is None:
        request = replace(request, output=Path(f"build/{info.path.resolve().name}-{request.precision}-{ep.name}"))
    calibration = request.calibration.expanduser() if request.calibration else None
    if calibration and not calibration.is_file():
        raise UsageError(f"calibration file {calibration} not found", hint="pass a .jsonl or .txt file")
    request = replace(request, calibration=calibration)
    pipeline = _build_pipeline(registry)
    plan = pipeline.plan(registry, info, ep, request)
    if request.plan_only:
        return plan
    return pipeline.run(registry, info, plan, request, _start_build_check(registry, request, info))


def make_plan(registry: Registry, info: ModelInfo, ep: ExecutionProvider, request: ConvertRequest) -> Plan:
    """The plan for ``request`` from the build pipeline with the highest priority (``slmk_build_pipelines``)."""
    return _build_pipeline(registry).plan(registry, info, ep, request)


def _build_pipeline(registry: Registry) -> BuildPipeline:
    """The build pipeline with the highest priority, or one line saying none is installed."""
    name = registry.default_name("slmk_build_pipelines")
    if name is None:
        raise SlmkError(
            "no build pipeline is installed: slmk cannot plan or build a conversion",
            hint="reinstall slmk (its built-in plugin slmk_build plans and runs builds), "
            "or take build out of SLMK_DISABLE_PLUGINS",
        )
    return registry.build_pipelines[name]


class _FixedVerdict:
    """Stands in for a build check that does not run: ``after`` records why."""

    def __init__(self, status: str, reason: str) -> None:
        self.verdict = {"status": status, "reason": reason}

    def before(self, final_key: str) -> None:
        """Nothing to run ahead of the build."""

    def after(self, folder: Path) -> dict[str, Any]:
        """The verdict: skipped or not verified, with why."""
        return dict(self.verdict)


class _PluginCheck:
    """The build check record ``name``, started: what the plugin raises becomes one line naming it
    (a refusal, an SlmkError, goes through as it is), and a verdict without a status is refused."""

    def __init__(self, registry: Registry, name: str, request: ConvertRequest, info: ModelInfo) -> None:
        self.owner, self.name = registry.owner("slmk_build_checks", name), name
        start = registry.build_checks[name].start
        self.started = call_plugin(self.owner, f"starting build check {name!r}", start, request, info, registry)

    def before(self, final_key: str) -> None:
        """The plugin's ``before``, ahead of the first step."""
        call_plugin(self.owner, f"build check {self.name!r} before the build", self.started.before, final_key)

    def after(self, folder: Path) -> dict[str, Any]:
        """The plugin's verdict on the finished build."""
        verdict = call_plugin(self.owner, f"build check {self.name!r} on the build", self.started.after, folder)
        if not isinstance(verdict, dict) or not isinstance(verdict.get("status"), str):
            raise PluginError(
                self.owner,
                "slmk_build_checks",
                f"build check {self.name!r} returned {type(verdict).__name__}, not a verdict with a status",
                hint="report it to the plugin's author; --no-verify builds without the check",
            )
        return verdict


def _start_build_check(registry: Registry, request: ConvertRequest, info: ModelInfo) -> Any:
    """The started check of the build check record with the highest priority; never none silently."""
    if not request.verify:
        return _FixedVerdict(STATUS_SKIPPED, "--no-verify: not compared with the source model")
    name = registry.default_name("slmk_build_checks")
    if name is None:
        return _FixedVerdict(STATUS_NOT_VERIFIED, "no build check installed (is the verify plugin disabled?)")
    return _PluginCheck(registry, name, request, info)


def _with_selected_converter(request: ConvertRequest, registry: Registry) -> ConvertRequest:
    """The request with its plugin settings resolved (slmk.toml and the environment when None) and a
    converter whose ``selected_by`` key is set there chosen, the value passed as its option
    (``olive.config`` -> ``olive_config``)."""
    plugin_settings = request.plugin_settings
    if plugin_settings is None:  # called from Python or another command: slmk.toml and the environment decide
        from .config import load_settings

        resolved = load_settings({}, plugin_settings=registry.settings.values())
        plugin_settings = {key: resolved[key] for key in registry.settings if resolved[key] is not None}
    via, model, options = request.via, request.model, dict(request.options)
    for name, converter in registry.converters.items():
        value = plugin_settings.get(converter.selected_by or "")
        if value is not None:
            via = name
            options[converter.selected_by.replace(".", "_")] = value
            if model is None and converter.default_model is not None:
                found = converter.default_model(options)
                model = Path(found) if found is not None else None
    return replace(request, via=via, model=model, options=options, plugin_settings=plugin_settings)


def materialize(
    model: str | Path,
    *,
    base: str | Path | None = None,
    progress: Progress | None = None,
    registry: Registry | None = None,
) -> Path:
    """A Hugging Face folder for ``model``: itself, or what a model source makes of it (an
    adapter merged into its base, cached)."""
    registry = registry or get_registry()
    source = registry.model_source(model)
    if source is None:
        return Path(model)
    return source.materialize(Path(model), Path(base) if base else None, progress or Progress(quiet=True))


def build_info(path: Path) -> dict[str, Any]:
    """slmk_build.json of a build ({} when absent): precision, EP, source, plan."""
    try:
        return json.loads((Path(path) / "slmk_build.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def open_session(
    path: str | Path,
    *,
    runtime: str | None = None,
    execution_provider: str | None = None,
    registry: Registry | None = None,
    installed=None,
    cache_dir: Path | None = None,
    options: dict[str, Any] | None = None,
) -> ChatSession:
    """Load a built model folder with a runtime plugin."""
    registry = registry or get_registry()
    folder = Path(path).expanduser()
    if not (folder / "genai_config.json").is_file():
        if (folder / "config.json").is_file():
            raise UsageError(
                f"{folder} is a Hugging Face folder, not a build", hint=f"build it first: slmk convert {folder} -o OUT"
            )
        raise UsageError(
            f"{folder} is not an slmk build (no genai_config.json)",
            hint="pass the output folder of `slmk convert` or an installed model name",
        )
    ep_name = execution_provider or build_info(folder).get("execution_provider") or "cpu"
    ep = registry.get("slmk_execution_providers", ep_name)
    require_usable(ep, "run the model")
    _check_chat_template(folder)
    rt = registry.get("slmk_runtimes", runtime)
    runtime = rt.name
    if rt.can_load:
        reason = rt.can_load(folder)
        if reason:
            raise UsageError(f"runtime {runtime} cannot load {folder}: {reason}")
    return rt.load(
        LoadRequest(path=folder, execution_provider=ep, installed=installed, cache_dir=cache_dir, options=options or {})
    )


def _source_runtime(registry: Registry) -> Runtime | None:
    """The preferred runtime that loads Hugging Face folders (the source model), or None."""
    found = [r for r in registry.runtimes.values() if r.input_format == FORMAT_HF]
    return max(found, key=lambda r: (r.priority, r.name)) if found else None


def source_unavailable(model: str | Path, registry: Registry | None = None) -> str | None:
    """Why the source model (a Hugging Face folder, run by transformers) cannot run here, or None."""
    folder = Path(model).expanduser()
    if (folder / "genai_config.json").is_file():
        return f"{folder} is already an ONNX build, not the source model"
    runtime = _source_runtime(registry or get_registry())
    if runtime is None:
        return "no runtime plugin loads Hugging Face folders (is the transformers plugin disabled?)"
    reason = runtime.can_load(folder) if runtime.can_load else None
    return f"{runtime.name} cannot load it: {reason}" if reason else None


def open_source_session(
    model: str | Path, *, registry: Registry | None = None, options: dict[str, Any] | None = None
) -> ChatSession:
    """Load the source model (a Hugging Face folder) with the runtime that runs sources (transformers):
    the reference builds are measured against. One-line UsageError when it cannot run here."""
    registry = registry or get_registry()
    reason = source_unavailable(model, registry)
    if reason:
        raise UsageError(
            f"the source model cannot run here: {reason}", hint="use --reference fp32 to measure against the fp32 build"
        )
    return _source_runtime(registry).load(
        LoadRequest(
            path=Path(model).expanduser(),
            execution_provider=resolve_ep(registry, "cpu"),
            options=options or {},
        )
    )


# ------------------------------------------------------------------ installs
def parse_ref(ref: str) -> tuple[str, str | None]:
    """``name`` or ``name:version``."""
    name, _, version = ref.partition(":")
    return name, (version or None)


def find_installed(
    ref: str, *, installer: str | None = None, cache_dir: Path | None = None, registry: Registry | None = None
):
    """The installed model ``NAME[:VERSION]`` (the newest version when none is given)."""
    registry = registry or get_registry()
    inst = registry.get("slmk_installers", installer)
    name, version = parse_ref(ref)
    models = [m for m in inst.list(cache_dir) if m.name == name and (version is None or m.version == version)]
    if not models:
        names = sorted({f"{m.name}:{m.version}" for m in inst.list(cache_dir)})
        raise UsageError(
            f"no installed model {ref!r} in {inst.locate(cache_dir)}",
            hint=f"installed: {', '.join(names) or 'none'}; install one with `slmk install BUILD_DIR --name NAME`",
        )
    return max(models, key=lambda m: int(m.version) if m.version.isdigit() else 0)


def resolve_target(
    target: str, *, installer: str | None = None, cache_dir: Path | None = None, registry: Registry | None = None
):
    """A build folder, or an installed model name: returns (folder, InstalledModel | None)."""
    folder = Path(target).expanduser()
    if folder.is_dir():
        return folder, None
    if folder.exists():  # a file is neither a build folder nor a model name
        raise UsageError(
            f"{target} is a file, not a build folder",
            hint="pass the output folder of `slmk convert` (it holds genai_config.json) or an installed model name",
        )
    if "/" in target or "\\" in target or target.startswith("."):
        raise UsageError(f"{target} does not exist", hint="pass a build folder or an installed model name")
    installed = find_installed(target, installer=installer, cache_dir=cache_dir, registry=registry)
    return installed.path, installed


def install(
    build_dir: str | Path,
    name: str,
    *,
    installer: str | None = None,
    cache_dir: str | Path | None = None,
    force: bool = False,
    template_file: str | Path | None = None,
    progress: Progress | None = None,
    registry: Registry | None = None,
):
    """Install a build with the right prompt template; returns the InstalledModel."""
    from .api.templates import resolve_template
    from .records import InstallRequest

    registry = registry or get_registry()
    info = ModelInfo.load(build_dir)
    if info.format == FORMAT_HF:
        raise UsageError(
            f"{info.path} is a Hugging Face folder, not a build",
            hint=f"build it first: slmk convert {info.path} -o OUT, or use `slmk deploy`",
        )
    resolved = resolve_template(registry, info, Path(template_file) if template_file else None)
    ep = registry.get("slmk_execution_providers", info.build_info.get("execution_provider") or "cpu")
    inst = registry.get("slmk_installers", installer)
    chat_template = None
    # the resolver reads any file that is not JSON as a Jinja chat template; so does install
    if template_file and Path(template_file).suffix != ".json":
        chat_template = Path(template_file).read_text(encoding="utf-8")
    return inst.install(
        InstallRequest(
            build_dir=info.path,
            name=name,
            execution_provider=ep,
            template=resolved.template,
            progress=progress or Progress(quiet=True),
            cache_dir=Path(cache_dir) if cache_dir else None,
            force=force,
            chat_template=chat_template,
        )
    )
