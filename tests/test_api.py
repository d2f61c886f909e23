"""The plugin API is a decision: its exact names, what importing it costs, the record base,
and tool plugins translating slmk's execution provider names (docs/plugin-authors.md)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from dataclasses import FrozenInstanceError

import pytest
import slmk_system
from slmk_foundry.layout import foundry_suffix
from slmk_olive.providers import builder_ep as olive_builder_ep
from slmk_olive.providers import olive_device, ort_provider
from slmk_ortgenai.providers import builder_ep, genai_provider

import slmk.api
from slmk.api import Command, ExecutionProvider, Record, Usability, UsageError
from slmk.records import RECORD_TYPES
from slmk.testing import make_registry

#: The contract at the top level. Adding a name here is a decision: it is supported for good.
TOP_LEVEL = [
    "BatchingSession", "BuildCheck", "BuildPipeline", "BuildResult", "ChatSession", "Command", "Converter",
    "ConvertRequest", "ExecutionProvider",
    "Executor", "ExecutorOptions", "ExecutorSession", "FORMAT_HF", "FORMAT_ORTGENAI", "GenerationStats",
    "InstallRequest", "InstalledModel", "Installer", "LoadRequest", "ModelFamily", "ModelInfo", "ModelSource",
    "PRECISIONS", "Plan", "PlannedStep", "Probe",
    "ProbeResult", "Progress", "PromptTemplate", "Quantizer", "Record", "Runtime", "ScoringSession", "Setting",
    "SlmkError", "StepFailed", "StepRequest", "StepRun", "Task", "TaskResult", "TemplateEngine", "ToolCallFormat",
    "Usability",
    "UsageError",
    "__version__", "hookimpl",
]  # fmt: skip

#: Helpers for plugin authors, by submodule.
SUBMODULES = {
    "authoring": ["PROJECT", "RECORD_TYPES", "hookspecs"],
    "cli": [
        "PRECISION_CHOICES", "State", "cache_dir_option", "emit_json", "generation_options", "human_size",
        "installer_cache", "json_option", "pass_state", "quiet_option", "runtime_options", "search_from",
    ],
    "files": [
        "atomic_dir", "atomic_file", "cache_root", "check_cache_folder", "clean_stale_tmp", "copy_tree", "dir_size",
        "file_lock",
        "fingerprint_tree", "hash_json", "installed_version", "is_temp_name", "link_or_copy_tree", "package_data_dir",
        "remove_tree", "temp_path", "temporary_environ", "tree_entries", "write_json_atomic", "write_text_atomic",
    ],
    "models": [
        "BUILD_INFO", "GENAI_CONFIG", "MAX_CONTEXT_LENGTH", "MAX_SESSION_THREADS", "SEARCH_OPTIONS", "build_problems",
        "check_messages", "context_length", "missing_search_defaults", "pickled_weights", "read_genai_config",
        "read_search", "search_defaults", "write_search",
    ],
    "operations": [
        "QUIET", "Registry", "build_info", "call_plugin", "check_precision", "check_values", "convert",
        "convert_request", "get_registry", "install", "make_plan", "materialize", "open_session", "open_source_session",
        "read_toml",
        "resolve_ep", "resolve_target", "run_doctor", "source_unavailable", "verification_summary",
    ],
    # the errors a template engine raises and callers catch, and what resolve_template returns: the
    # kernel's, so a plugin implementing or catching them never loads the engine (slmk_templates)
    "templates": [
        "ChatTemplateError", "ChatTemplateSyntaxError", "RenderLimitError", "ResolvedTemplate", "TemplateError",
        "TemplateMismatch", "UnsafeTemplateError", "check_round_trip", "constraint_schema", "derive_prompt_template",
        "model_identity", "render_chat_template", "resolve_family", "resolve_template", "sample_rendering",
        "special_tokens_for",
    ],
    "testing": ["isolated_default_registry", "make_registry", "pause_point"],
}  # fmt: skip


def test_the_top_level_names_are_exactly_the_contract():
    assert sorted(slmk.api.__all__) == sorted(TOP_LEVEL)


@pytest.mark.parametrize("name", sorted(SUBMODULES))
def test_each_submodule_exports_exactly_its_helpers(name):
    module = importlib.import_module(f"slmk.api.{name}")
    assert sorted(module.__all__) == sorted(SUBMODULES[name])


def test_a_name_has_one_home():
    homes = [*TOP_LEVEL, *(n for names in SUBMODULES.values() for n in names)]
    assert sorted(n for n in set(homes) if homes.count(n) > 1) == []


def _modules_after(statement: str) -> set[str]:
    code = f"{statement}; import sys, json; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out))


def test_importing_the_contract_loads_no_click_jinja_or_pipeline():
    loaded = _modules_after("import slmk.api")
    heavy = {"click", "jinja2", "slmk.app", "slmk_build", "slmk.cli", "slmk.templates"}
    assert sorted(loaded & heavy) == []
    assert not [m for m in loaded if m.startswith("slmk.api.")]  # submodules load when asked for


def test_the_submodules_load_what_they_need_only_when_asked():
    assert "click" not in _modules_after("import slmk.api.files, slmk.api.models")
    assert "click" in _modules_after("import slmk.api.cli")
    assert "slmk.app" in _modules_after("import slmk.api.operations")


# ------------------------------------------------------------------------ the record base
def _ep(name: str, **extra) -> ExecutionProvider:
    return ExecutionProvider(
        name=name,
        description="test",
        build_precisions=("int4",),
        run_precisions=("int4",),
        probe=lambda: Usability(True, "always"),
        **extra,
    )


def test_every_record_type_has_the_one_base():
    assert [t.__name__ for t in RECORD_TYPES.values() if not issubclass(t, Record)] == []


@pytest.mark.parametrize("bad", ["", "Cuda", "my npu", "-x", "naïve", 3])
def test_a_record_with_an_unusable_name_is_refused_when_made(bad):
    with pytest.raises(ValueError, match=r"name .* is not usable"):
        _ep(bad)


def test_priority_is_keyword_only_an_int_and_zero_by_default():
    assert _ep("npu").priority == 0 and _ep("npu", priority=5).priority == 5
    with pytest.raises(ValueError, match="priority must be an int"):
        _ep("npu", priority="high")
    with pytest.raises(FrozenInstanceError):
        _ep("npu").priority = 3  # type: ignore[misc]


def test_the_registry_picks_the_default_by_the_base_priority():
    class Plugin:
        @slmk.api.hookimpl
        def slmk_commands(self):
            yield Command(name="low", summary="", load=lambda: None)
            yield Command(name="high", summary="", load=lambda: None, priority=3)

    assert make_registry(Plugin()).default_name("slmk_commands") == "high"


# ------------------------------------------------------- tool plugins translate slmk's EP names
TRANSLATIONS = [
    (builder_ep, {"cpu": "cpu", "cuda": "cuda", "dml": "dml", "webgpu": "webgpu"}),
    (genai_provider, {"cpu": None, "cuda": "cuda", "dml": "dml", "webgpu": "webgpu"}),
    (olive_builder_ep, {"cpu": "cpu", "cuda": "cuda", "dml": "dml", "webgpu": "webgpu"}),
    (ort_provider, {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "dml": "DmlExecutionProvider"}),
    (olive_device, {"cpu": "cpu", "cuda": "gpu", "webgpu": "gpu"}),
    (foundry_suffix, {"cpu": "generic-cpu", "cuda": "cuda-gpu", "dml": "generic-gpu", "webgpu": "generic-gpu"}),
]


@pytest.mark.parametrize(("translate", "expected"), TRANSLATIONS, ids=lambda t: getattr(t, "__qualname__", ""))
def test_each_tool_plugin_maps_the_built_in_providers(translate, expected):
    providers = make_registry(slmk_system).execution_providers
    for name, tool_name in expected.items():
        assert translate(providers[name]) == tool_name


@pytest.mark.parametrize("translate", [t for t, _ in TRANSLATIONS], ids=lambda t: t.__module__ + "." + t.__name__)
def test_a_tool_refuses_a_provider_it_has_no_name_for_in_one_line(translate):
    with pytest.raises(UsageError) as caught:
        translate(_ep("mynpu"))
    assert "'mynpu'" in caught.value.message and "\n" not in str(caught.value)
    assert "cpu" in caught.value.hint
