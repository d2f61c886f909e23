"""The contract between the kernel and plugins: one hook per extension point.

Every hook takes no arguments and returns an iterable of records (see
``slmk.records``). A plugin is a module or object with functions decorated by
``slmk.hookimpl`` and registered under the ``slmk`` entry-point group::

    [project.entry-points.slmk]
    my_family = "slmk_my_family"

The docstrings below are rendered into docs/hooks.md; each example runs.
"""

from __future__ import annotations

from collections.abc import Iterable

import pluggy

from .records import (
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
    Quantizer,
    Runtime,
    Setting,
    TemplateEngine,
)

hookspec = pluggy.HookspecMarker("slmk")
hookimpl = pluggy.HookimplMarker("slmk")


@hookspec
def slmk_probes() -> Iterable[Probe]:
    """Checks of the environment that ``slmk doctor`` runs.

    A probe's ``check()`` returns ``ProbeResult`` findings and never raises; each
    problem carries a ``fix`` the user can act on.

    Example::

        import shutil
        from slmk.api import Probe, ProbeResult, hookimpl

        def _check_git():
            found = shutil.which("git")
            if found:
                yield ProbeResult("git", "ok", f"git at {found}")
            else:
                yield ProbeResult("git", "warn", "git not found", fix="apt-get install git")

        @hookimpl
        def slmk_probes():
            yield Probe(name="git", description="git is on PATH", check=_check_git)
    """


@hookspec
def slmk_execution_providers() -> Iterable[ExecutionProvider]:
    """Hardware providers: slmk's name, what users see, precisions, and a usability probe.

    ``probe()`` is a small function that never raises; honour an override
    environment variable so users can force it (like conda's ``CONDA_OVERRIDE_CUDA``).
    The record names no tool: each tool plugin maps slmk's name to its tool's names
    (``ep.tool_name(MAPPING, "the tool")``) and refuses, in one line, one it does not map.

    Example::

        from slmk.api import ExecutionProvider, Usability, hookimpl

        @hookimpl
        def slmk_execution_providers():
            yield ExecutionProvider(
                name="mynpu", description="Example NPU",
                build_precisions=("int4",), run_precisions=("int4",),
                probe=lambda: Usability(False, "no NPU driver found", fix="install the NPU driver"),
            )
    """


@hookspec
def slmk_model_families() -> Iterable[ModelFamily]:
    """Model families: recognise a model and give its prompt template and defaults.

    ``match(info)`` scores a ``ModelInfo`` (0 = not mine). The highest score wins;
    when no family scores above 0, the generic provider derives the template from
    the model's own chat template.

    Example::

        from slmk.api import ModelFamily, PromptTemplate, hookimpl

        TEMPLATE = PromptTemplate(
            system="<|system|>\\n{Content}\\n", user="<|user|>\\n{Content}\\n",
            assistant="<|assistant|>\\n{Content}\\n", prompt="<|user|>\\n{Content}\\n<|assistant|>\\n",
            source="family:example",
        )

        @hookimpl
        def slmk_model_families():
            yield ModelFamily(
                name="example", description="Example family",
                match=lambda info: 100 if info.model_type == "example" else 0,
                prompt_template=lambda info: TEMPLATE,
                stop_tokens=("<|user|>",), generation_defaults={"temperature": 0.7},
            )
    """


@hookspec
def slmk_converters() -> Iterable[Converter]:
    """Converters from a Hugging Face folder to an ONNX Runtime GenAI folder.

    ``convert(request)`` writes into ``request.output`` (an empty folder the kernel
    renames into place on success) and raises ``slmk.errors.SlmkError`` with a hint
    on failure. Import heavy libraries inside ``convert``, never at module level.

    Example::

        import shutil
        from slmk.api import Converter, hookimpl

        def _copy_prebuilt(request):
            # a converter for folders that already hold an ONNX build
            shutil.copytree(request.source, request.output, dirs_exist_ok=True)

        @hookimpl
        def slmk_converters():
            yield Converter(
                name="copy-prebuilt", description="Copies a prebuilt ONNX folder",
                precisions=("fp32",), execution_providers=("cpu",), convert=_copy_prebuilt,
            )
    """


@hookspec
def slmk_quantizers() -> Iterable[Quantizer]:
    """Quantizers: lower the precision of HF weights (``stage="hf"``) or of an ONNX build.

    The planner places an ``hf`` quantizer before a converter that accepts quantized
    input, and an ``ortgenai`` quantizer after an fp32 conversion.

    Example::

        from slmk.api import FORMAT_ORTGENAI, Quantizer, hookimpl

        def _quantize(request):
            ...  # read request.source, write the quantized model into request.output

        @hookimpl
        def slmk_quantizers():
            yield Quantizer(
                name="my-int4", description="Example ONNX int4 quantizer",
                stage=FORMAT_ORTGENAI, precisions=("int4",), quantize=_quantize,
            )
    """


@hookspec
def slmk_installers() -> Iterable[Installer]:
    """Installers: put a built model where a runtime finds it; list and remove.

    ``install`` must be atomic: write under a temporary name, check, then rename.

    Example::

        from slmk.api import Installer, hookimpl

        @hookimpl
        def slmk_installers():
            yield Installer(
                name="folder", description="Copies the build into a folder",
                install=lambda request: ..., list=lambda cache_dir: [],
                remove=lambda name, version, cache_dir: ..., locate=lambda cache_dir: cache_dir,
            )
    """


@hookspec
def slmk_runtimes() -> Iterable[Runtime]:
    """Runtimes: load a built or installed model and generate (run, bench, validate).

    ``load(request)`` returns a ``slmk.records.ChatSession``: ``generate(messages,
    **search)`` streams text pieces and sets ``last_stats``; ``close()`` frees it.

    Example::

        from slmk.api import Runtime, hookimpl

        class EchoSession:
            last_stats = None
            def generate(self, messages, **search):
                yield messages[-1]["content"]
            def close(self):
                pass

        @hookimpl
        def slmk_runtimes():
            yield Runtime(name="echo", description="Echoes the prompt", load=lambda request: EchoSession())
    """


@hookspec
def slmk_executors() -> Iterable[Executor]:
    """Executors: where the tasks of a sweep run (this process, local workers, a cluster).

    ``open(options)`` returns a session whose ``submit(task)`` gives a
    ``concurrent.futures.Future`` resolving to a ``TaskResult``; ``close()`` stops
    everything the session started. Honour ``Task.exclusive`` (run alone),
    ``num_cpus``/``memory_bytes``, ``accelerator`` and ``retries`` as far as the
    engine can; import the engine inside ``open``.

    Example::

        import socket
        import time
        from concurrent.futures import Future
        from slmk.api import Executor, TaskResult, hookimpl

        class InlineSession:
            def submit(self, task):
                future = Future()
                start = time.perf_counter()
                try:
                    value = task.function(*task.args, **task.kwargs)
                except Exception as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(TaskResult(value, socket.gethostname(), time.perf_counter() - start))
                return future

            def close(self):
                pass

        @hookimpl
        def slmk_executors():
            yield Executor(name="inline", description="Runs each task at once", open=lambda options: InlineSession())
    """


@hookspec
def slmk_model_sources() -> Iterable[ModelSource]:
    """Folders that are not plain Hugging Face models but can become one (a LoRA adapter).

    ``inspect``, ``convert``, ``compare`` and ``deploy`` ask each source's ``detect`` first;
    the first that claims a folder describes it, materializes it into a Hugging Face
    folder, or converts it itself for its own ``modes`` beyond the first: ``convert(request)``
    gets the whole ConvertRequest (``request.source_mode`` names the mode).

    Example::

        import json
        from pathlib import Path
        from slmk.api import ModelSource, hookimpl

        def _detect(path):
            return (Path(path) / "delta.json").is_file()

        def _describe(path, base):
            return {"kind": "delta", "base": json.loads((Path(path) / "delta.json").read_text())["base"]}

        def _materialize(path, base, progress):
            return Path(base or _describe(path, None)["base"])  # a real source writes a merged folder

        @hookimpl
        def slmk_model_sources():
            yield ModelSource(name="delta", description="a base plus a weight delta", detect=_detect,
                              describe=_describe, materialize=_materialize)  # one mode: no convert
    """


@hookspec
def slmk_commands() -> Iterable[Command]:
    """``slmk`` sub-commands a plugin contributes, as records.

    ``load()`` returns the click command and runs only when the command is used, so
    ``slmk --help`` stays fast. A name a built-in command already has is refused
    and reported by ``slmk plugins`` and ``slmk doctor``; so is the second of two
    plugins' commands with one name. Every other command keeps working.

    Example::

        from slmk.api import Command, hookimpl

        def _load():
            import click

            @click.command(name="hello")
            def hello():
                \"\"\"Say hello.\"\"\"
                click.echo("hello from a plugin")

            return hello

        @hookimpl
        def slmk_commands():
            yield Command(name="hello", summary="Say hello.", load=_load)
    """


@hookspec
def slmk_settings() -> Iterable[Setting]:
    """slmk.toml keys a plugin adds, under its own table, validated like the kernel's.

    Values resolve as the kernel's do: command line > ``SLMK_<KEY>`` > slmk.toml >
    default. ``flag`` adds a command-line option to the commands in ``commands``.

    Example::

        from slmk.api import Setting, hookimpl

        @hookimpl
        def slmk_settings():
            yield Setting("hello.greeting", str, "hello", "what `slmk hello` says")
            yield Setting("hello.times", int, 1, "how often", check=lambda v: v > 0, check_help="> 0")
    """


@hookspec
def slmk_build_checks() -> Iterable[BuildCheck]:
    """Checks ``slmk convert`` runs around each build: the source model is the truth.

    ``start(request, info, registry)`` returns an object whose ``before(final_key)`` runs
    ahead of the first step and whose ``after(folder)`` returns the verdict recorded in
    slmk_build.json (``status``, ``reason`` or ``summary``), or raises SlmkError to refuse
    the build. Only the check with the highest priority runs; ``--no-verify`` runs none.
    Cache what is costly under the step cache (``request.cache_dir``, else ``cache_root()``).

    Example::

        from pathlib import Path
        from slmk.api import BuildCheck, SlmkError, hookimpl

        class TokenizerKept:
            \"\"\"Refuses a build that lost the source's tokenizer.json.\"\"\"

            def __init__(self, request, info, registry):
                self.source = Path(info.path)
                self.wanted = False

            def before(self, final_key):
                self.wanted = (self.source / "tokenizer.json").is_file()

            def after(self, folder):
                if self.wanted and not (Path(folder) / "tokenizer.json").is_file():
                    raise SlmkError("the build lost the source's tokenizer.json", hint="try another converter")
                return {"status": "verified", "summary": "the build keeps the source's tokenizer.json"}

        @hookimpl
        def slmk_build_checks():
            yield BuildCheck(name="tokenizer-kept", description="the build keeps the tokenizer", start=TokenizerKept)
    """


@hookspec
def slmk_template_engines() -> Iterable[TemplateEngine]:
    """The engine that renders chat templates and derives PromptTemplates (slmk.api.templates).

    slmk uses the one with the highest ``priority`` (the built-in ``slmk_templates`` renders as
    transformers does, in a bounded sandbox and worker process). Every rendering ends in text
    or a one-line ``ChatTemplateError``: the kernel renders a build's template through it before
    a runtime loads the build, so an engine without limits lets a hostile template hang slmk.

    Example::

        import types

        from slmk.api import PromptTemplate, TemplateEngine, hookimpl
        from slmk.api.templates import ResolvedTemplate, TemplateMismatch

        CHATML = PromptTemplate(
            system="<|im_start|>system\\n{Content}<|im_end|>\\n", user="<|im_start|>user\\n{Content}<|im_end|>\\n",
            assistant="<|im_start|>assistant\\n{Content}<|im_end|>\\n",
            prompt="<|im_start|>user\\n{Content}<|im_end|>\\n<|im_start|>assistant\\n", source="chatml",
        )

        def _render(chat_template, messages, *, add_generation_prompt=True, special_tokens=None, tools=None, **_):
            return CHATML.render(messages)  # a toy: one prompt format, whatever the model's template says

        def _check(chat_template, template, special_tokens=None):
            if template.to_foundry() != CHATML.to_foundry():
                raise TemplateMismatch("the pieces are not ChatML", hint="use the ChatML pieces")
            return types.SimpleNamespace(checked=(), skipped=(), notes=("a toy engine renders nothing to compare",))

        @hookimpl
        def slmk_template_engines():
            yield TemplateEngine(
                name="chatml-only", description="Every model is ChatML", priority=-1,
                render_chat_template=_render, special_tokens_for=lambda info: {},
                derive_prompt_template=lambda chat_template, special_tokens=None, *, source="": CHATML,
                check_round_trip=_check, sample_rendering=lambda info: None,
                resolve_template=lambda registry, info, template_file=None: ResolvedTemplate(CHATML, None, "chatml"),
            )
    """


@hookspec
def slmk_build_pipelines() -> Iterable[BuildPipeline]:
    """How ``slmk convert`` plans and runs a build; the pipeline with the highest priority is used.

    ``plan(registry, info, ep, request)`` returns a Plan (or raises a one-line SlmkError);
    ``run(registry, info, plan, request, check)`` builds it into ``request.output`` around the
    started build check and returns a BuildResult. The built-in ``slmk_build`` plans from the
    converters' and quantizers' records and caches each step by its inputs.

    Example::

        import json
        import shutil
        from pathlib import Path
        from slmk.api import BuildPipeline, BuildResult, Plan, PlannedStep, hookimpl
        from slmk.api.models import BUILD_INFO

        def plan_copy(registry, info, ep, request):
            step = PlannedStep("convert", "copy", "example", request.precision, "hf", "hf")
            return Plan(request.precision, ep.name, "direct", (step,), "copies the folder as it is")

        def run_copy(registry, info, plan, request, check):
            output = Path(request.output)
            check.before("copy-" + plan.precision)
            shutil.copytree(info.path, output)
            verdict = check.after(output)
            (output / BUILD_INFO).write_text(json.dumps({"plan": plan.as_dict(), "verification": verdict}))
            return BuildResult(output=output, plan=plan)

        @hookimpl
        def slmk_build_pipelines():
            yield BuildPipeline(name="copy", description="copies the model folder", plan=plan_copy, run=run_copy)
    """
