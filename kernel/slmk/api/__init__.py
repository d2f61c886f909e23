"""The contract between slmk and its plugins: ``hookimpl``, the records hooks return, the errors.

Built-in plugins (``plugins/slmk_*``) and third-party ones import the kernel only through
``slmk.api`` and its submodules; the kernel's modules behind them may move, these names
stay. ``tests/test_api.py`` holds the exact list of names below, so adding one is a
decision, and checks that importing this module stays cheap (no click, no Jinja, no
build pipeline): a plugin that only yields a ModelFamily pays for nothing else.

Helpers for plugin authors live in named submodules, each loading only what it needs:

- ``slmk.api.files``: atomic folders and files, locks, temporary names, the cache root, tree copies;
- ``slmk.api.models``: model folders and the build format (genai_config.json, search options);
- ``slmk.api.templates``: chat templates (the template engine's: bounded), PromptTemplate checks, constraints;
- ``slmk.api.operations``: what plugin commands call (convert, install, open a session, the registry);
- ``slmk.api.cli``: shared click options and output helpers for ``slmk_commands`` plugins;
- ``slmk.api.authoring``: the hookspecs and record types, for tools that document or check plugins;
- ``slmk.api.testing``: fresh registries and named pause points for plugins' tests.
"""

from __future__ import annotations

from .. import __version__
from ..builds import BuildResult, Plan, PlannedStep, StepRun
from ..errors import SlmkError, StepFailed, UsageError
from ..hookspecs import hookimpl
from ..modelinfo import ModelInfo
from ..progress import Progress
from ..records import (
    FORMAT_HF,
    FORMAT_ORTGENAI,
    PRECISIONS,
    BatchingSession,
    BuildCheck,
    BuildPipeline,
    ChatSession,
    Command,
    Converter,
    ConvertRequest,
    ExecutionProvider,
    Executor,
    ExecutorOptions,
    ExecutorSession,
    GenerationStats,
    InstalledModel,
    Installer,
    InstallRequest,
    LoadRequest,
    ModelFamily,
    ModelSource,
    Probe,
    ProbeResult,
    PromptTemplate,
    Quantizer,
    Record,
    Runtime,
    ScoringSession,
    Setting,
    StepRequest,
    Task,
    TaskResult,
    TemplateEngine,
    ToolCallFormat,
    Usability,
)

__all__ = [
    "__version__",
    "hookimpl",
    # errors: raise these and the CLI prints one clear line
    "SlmkError",
    "StepFailed",
    "UsageError",
    # what hooks return and what they are given
    "FORMAT_HF",
    "FORMAT_ORTGENAI",
    "PRECISIONS",
    "Record",
    "BatchingSession",
    "BuildCheck",
    "BuildPipeline",
    "BuildResult",
    "ChatSession",
    "Command",
    "Converter",
    "ExecutionProvider",
    "Executor",
    "ExecutorOptions",
    "ExecutorSession",
    "GenerationStats",
    "InstallRequest",
    "InstalledModel",
    "Installer",
    "LoadRequest",
    "ModelFamily",
    "ModelInfo",
    "ModelSource",
    "Plan",
    "PlannedStep",
    "Probe",
    "ProbeResult",
    "Progress",
    "PromptTemplate",
    "Quantizer",
    "Runtime",
    "ScoringSession",
    "Setting",
    "StepRequest",
    "StepRun",
    "ConvertRequest",
    "Task",
    "TaskResult",
    "TemplateEngine",
    "ToolCallFormat",
    "Usability",
]
