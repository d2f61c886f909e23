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

import click
import pluggy

from .records import (
    Converter,
    ExecutionProvider,
    Executor,
    Installer,
    ModelFamily,
    Probe,
    Quantizer,
    Runtime,
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
        from slmk import hookimpl
        from slmk.records import Probe, ProbeResult

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
    """Hardware providers: the names each tool uses, precisions, and a usability probe.

    ``probe()`` is a small function that never raises; honour an override
    environment variable so users can force it (like conda's ``CONDA_OVERRIDE_CUDA``).

    Example::

        from slmk import hookimpl
        from slmk.records import ExecutionProvider, Usability

        @hookimpl
        def slmk_execution_providers():
            yield ExecutionProvider(
                name="mynpu", description="Example NPU",
                ort_provider="MyNpuExecutionProvider", genai_provider="mynpu",
                builder_ep="cpu", olive_device="npu", foundry_suffix="mynpu-npu",
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

        from slmk import hookimpl
        from slmk.records import ModelFamily, PromptTemplate

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
        from slmk import hookimpl
        from slmk.records import Converter

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

        from slmk import hookimpl
        from slmk.records import FORMAT_ORTGENAI, Quantizer

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

        from slmk import hookimpl
        from slmk.records import Installer

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

        from slmk import hookimpl
        from slmk.records import Runtime

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
        from slmk import hookimpl
        from slmk.records import Executor, TaskResult

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
def slmk_cli_commands() -> Iterable[click.Command]:
    """Extra ``slmk`` sub-commands (click commands) a plugin contributes.

    Keep the command module light: import heavy libraries inside the callback.

    Example::

        import click
        from slmk import hookimpl

        @click.command(name="hello")
        def hello():
            \"\"\"Say hello.\"\"\"
            click.echo("hello from a plugin")

        @hookimpl
        def slmk_cli_commands():
            yield hello
    """
