"""The one public surface for plugins: import from here, nothing else of the kernel.

Built-in plugins (``plugins/slmk_*``) and third-party ones use exactly these names;
the kernel's modules behind them may move, these names stay. A test checks that
plugins, the plugin template and the examples import ``slmk.api`` and nothing else
of ``slmk``, and that no plugin imports another.

Groups:

- contract: ``hookimpl`` and the records hooks return (``slmk.records``);
- errors: what a plugin raises so the CLI prints one clear line;
- model folders: ``ModelInfo``, the build format (genai_config.json) helpers;
- files: atomic folders and files, locks, the cache root, safe tree copies;
- chat templates: rendering (sandboxed, bounded) and the PromptTemplate round trip;
- operations: what commands contributed by plugins call (convert, load, install ...);
- command line: shared click options and output helpers for ``slmk_commands`` plugins.
"""

from __future__ import annotations

from . import PROJECT, __version__
from .app import (
    build_info,
    convert,
    find_installed,
    get_registry,
    install,
    open_session,
    parse_ref,
    require_usable,
    resolve_ep,
    resolve_target,
)
from .errors import ConfigError, PluginError, SlmkError, StepFailed, UsageError
from .fsutil import (
    TMP_PREFIX,
    atomic_dir,
    cache_root,
    clean_stale_tmp,
    dir_size,
    file_lock,
    hash_json,
    link_or_copy_tree,
)
from .genai_format import (
    GENAI_CONFIG,
    SEARCH_OPTIONS,
    build_problems,
    context_length,
    missing_search_defaults,
    read_genai_config,
    read_search,
    search_defaults,
    write_json_atomic,
    write_search,
)
from .hookspecs import hookimpl
from .messages import check_messages, installed_version
from .modelinfo import ModelInfo
from .progress import QUIET, Progress
from .records import (
    FORMAT_HF,
    FORMAT_ORTGENAI,
    PRECISIONS,
    ChatSession,
    Converter,
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
    Probe,
    ProbeResult,
    PromptTemplate,
    Quantizer,
    Runtime,
    StepRequest,
    Task,
    TaskResult,
    Usability,
)
from .templates import (
    ChatTemplateError,
    TemplateError,
    TemplateMismatch,
    analyse_chat_template,
    as_special_tokens,
    check_round_trip,
    derive_prompt_template,
    model_identity,
    render_chat_template,
    sample_rendering,
    special_tokens_for,
)

__all__ = [
    # contract
    "PROJECT",
    "__version__",
    "hookimpl",
    "FORMAT_HF",
    "FORMAT_ORTGENAI",
    "PRECISIONS",
    "ChatSession",
    "Converter",
    "ExecutionProvider",
    "Executor",
    "ExecutorOptions",
    "ExecutorSession",
    "GenerationStats",
    "InstalledModel",
    "Installer",
    "InstallRequest",
    "LoadRequest",
    "ModelFamily",
    "Probe",
    "ProbeResult",
    "PromptTemplate",
    "Quantizer",
    "Runtime",
    "StepRequest",
    "Task",
    "TaskResult",
    "Usability",
    # errors
    "ConfigError",
    "PluginError",
    "SlmkError",
    "StepFailed",
    "UsageError",
    # model folders and the build format
    "ModelInfo",
    "GENAI_CONFIG",
    "SEARCH_OPTIONS",
    "build_problems",
    "context_length",
    "missing_search_defaults",
    "read_genai_config",
    "read_search",
    "search_defaults",
    "write_search",
    # files
    "TMP_PREFIX",
    "atomic_dir",
    "cache_root",
    "clean_stale_tmp",
    "dir_size",
    "file_lock",
    "hash_json",
    "link_or_copy_tree",
    "write_json_atomic",
    # progress and messages
    "QUIET",
    "Progress",
    "check_messages",
    "installed_version",
    # chat templates
    "ChatTemplateError",
    "TemplateError",
    "TemplateMismatch",
    "analyse_chat_template",
    "as_special_tokens",
    "check_round_trip",
    "derive_prompt_template",
    "model_identity",
    "render_chat_template",
    "sample_rendering",
    "special_tokens_for",
    # operations
    "build_info",
    "convert",
    "find_installed",
    "get_registry",
    "install",
    "open_session",
    "parse_ref",
    "require_usable",
    "resolve_ep",
    "resolve_target",
]
