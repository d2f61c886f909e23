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

from . import PROJECT, __version__, hookspecs
from .app import (
    build_info,
    convert,
    convert_request,
    find_installed,
    get_registry,
    inspect_model,
    install,
    materialize,
    open_session,
    open_source_session,
    parse_ref,
    require_usable,
    resolve_ep,
    resolve_target,
    run_doctor,
    show_template,
    source_unavailable,
)
from .cli.options import (
    PRECISION_CHOICES,
    State,
    cache_dir_option,
    emit_json,
    generation_options,
    human_size,
    installer_cache,
    json_option,
    pass_state,
    quiet_option,
    runtime_options,
    search_from,
)
from .config import Settings, check_values, load_settings, read_toml
from .constraints import constraint_schema
from .environ import temporary_environ
from .errors import ConfigError, PluginError, SlmkError, StepFailed, UsageError
from .fsutil import (
    TMP_PREFIX,
    atomic_dir,
    atomic_file,
    cache_root,
    clean_stale_tmp,
    copy_tree,
    dir_size,
    file_lock,
    hash_json,
    link_or_copy_tree,
    remove_tree,
    tree_entries,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from .genai_format import (
    GENAI_CONFIG,
    MAX_CONTEXT_LENGTH,
    MAX_SESSION_THREADS,
    SEARCH_OPTIONS,
    build_problems,
    context_length,
    missing_search_defaults,
    read_genai_config,
    read_search,
    search_defaults,
    write_search,
)
from .hookspecs import hookimpl
from .messages import check_messages, installed_version, package_data_dir
from .modelinfo import ModelInfo, pickled_weights
from .planner import Plan, check_precision, make_plan
from .plugins import PluginInfo, Registry, make_registry
from .progress import QUIET, Progress
from .prompt_template import (
    TemplateMismatch,
    analyse_chat_template,
    check_round_trip,
    derive_prompt_template,
    model_identity,
    resolve_family,
    resolve_template,
    sample_rendering,
)
from .records import (
    FORMAT_HF,
    FORMAT_ORTGENAI,
    PRECISIONS,
    RECORD_TYPES,
    BatchingSession,
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
    Runtime,
    ScoringSession,
    Setting,
    StepRequest,
    Task,
    TaskResult,
    ToolCallFormat,
    Usability,
)
from .sandbox import ChatTemplateError, TemplateError, as_special_tokens, render_chat_template, special_tokens_for
from .testpoints import pause_point
from .verify import summary as verification_summary

__all__ = [
    # contract
    "PROJECT",
    "RECORD_TYPES",
    "__version__",
    "hookimpl",
    "hookspecs",
    "FORMAT_HF",
    "FORMAT_ORTGENAI",
    "PRECISIONS",
    "ChatSession",
    "Command",
    "Converter",
    "ConvertRequest",
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
    "ToolCallFormat",
    "ModelSource",
    "Probe",
    "ProbeResult",
    "PromptTemplate",
    "Quantizer",
    "Runtime",
    "BatchingSession",
    "ScoringSession",
    "Setting",
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
    "GENAI_CONFIG",
    "MAX_CONTEXT_LENGTH",
    "MAX_SESSION_THREADS",
    "SEARCH_OPTIONS",
    "ModelInfo",
    "pickled_weights",
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
    "copy_tree",
    "remove_tree",
    "tree_entries",
    "atomic_file",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
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
    "resolve_family",
    "resolve_template",
    "sample_rendering",
    "special_tokens_for",
    # decoding constraints
    "constraint_schema",
    # plugins, settings and operations
    "Plan",
    "PluginInfo",
    "Registry",
    "Settings",
    "check_precision",
    "make_plan",
    "make_registry",
    "materialize",
    "build_info",
    "convert",
    "convert_request",
    "find_installed",
    "get_registry",
    "inspect_model",
    "install",
    "load_settings",
    "check_values",
    "read_toml",
    "temporary_environ",
    "open_session",
    "open_source_session",
    "package_data_dir",
    "parse_ref",
    "pause_point",
    "require_usable",
    "resolve_ep",
    "resolve_target",
    "run_doctor",
    "show_template",
    "source_unavailable",
    "verification_summary",
    # command line, for slmk_commands plugins
    "PRECISION_CHOICES",
    "State",
    "cache_dir_option",
    "emit_json",
    "generation_options",
    "human_size",
    "installer_cache",
    "json_option",
    "pass_state",
    "quiet_option",
    "runtime_options",
    "search_from",
]
