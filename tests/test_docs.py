"""The hook reference: every hookspec is documented with an example that runs, and
docs/hooks.md is what `slmk plugin hooks` (`python -m slmk_authoring.docgen`) renders from them."""

from __future__ import annotations

import inspect
import operator
import re
import subprocess
import sys
import types
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from slmk_authoring import docgen

from slmk.errors import SlmkError
from slmk.modelinfo import ModelInfo
from slmk.progress import Progress
from slmk.records import (
    FORMAT_HF,
    RECORD_TYPES,
    ConvertRequest,
    ExecutionProvider,
    ExecutorOptions,
    InstalledModel,
    LoadRequest,
    ProbeResult,
    PromptTemplate,
    StepRequest,
    Task,
    TaskResult,
    Usability,
)
from slmk.testing import make_registry

REPO = Path(__file__).resolve().parent.parent
HOOKS_MD = REPO / "docs" / "hooks.md"
HOOKS = docgen.hookspec_functions()
CPU = ExecutionProvider(
    name="cpu",
    description="test",
    build_precisions=("fp32",),
    run_precisions=("fp32",),
    probe=lambda: Usability(True, "test"),
)


def test_every_hook_has_a_spec_and_a_record_type():
    names = [name for name, _ in HOOKS]
    assert names and set(names) == set(RECORD_TYPES)


@pytest.mark.parametrize(("hook_name", "function"), HOOKS, ids=[name for name, _ in HOOKS])
def test_every_hookspec_is_documented_with_an_example(hook_name, function):
    doc = inspect.getdoc(function) or ""
    prose, example = docgen.split_docstring(doc)
    assert prose.split("\n")[0].strip(), f"{hook_name} has no summary line"
    assert docgen.EXAMPLE_MARKER in doc and example, f"{hook_name}'s docstring has no Example:: block"
    assert "@hookimpl" in example and f"def {hook_name}(" in example, f"{hook_name}'s example implements no hook"


def test_hooks_md_is_up_to_date():
    assert HOOKS_MD.read_text(encoding="utf-8") == docgen.render(), (
        f"docs/hooks.md is out of date with the hookspecs: run `{docgen.COMMAND}`"
    )


def test_the_generator_runs_as_documented_and_imports_nothing_heavy():
    code = (
        "import runpy, sys, io, contextlib; out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out): runpy.run_module('slmk_authoring.docgen', run_name='__main__')\n"
        "heavy = ('torch', 'transformers', 'onnxruntime', 'onnxruntime_genai', 'olive')\n"
        "heavy = [m for m in heavy if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "sys.stdout.write(out.getvalue())"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout == docgen.render()


def _check_records(hook_name: str, records: dict, tmp_path: Path) -> None:
    """Use what each example returns the way the kernel does."""
    info = ModelInfo(path=tmp_path, format=FORMAT_HF, config={}, model_type="example", architectures=())
    for record in records.values():
        if hook_name == "slmk_probes":
            assert all(isinstance(result, ProbeResult) for result in record.check())
        elif hook_name == "slmk_execution_providers":
            assert isinstance(record.probe(), Usability)
        elif hook_name == "slmk_model_families":
            assert isinstance(record.match(info), int)
            template = record.prompt_template(info)
            assert isinstance(template, PromptTemplate)
            assert all(piece.count("{Content}") == 1 for piece in template.to_foundry().values())
        elif hook_name in ("slmk_converters", "slmk_quantizers"):
            source, output = tmp_path / "source", tmp_path / f"out-{record.name}"
            source.mkdir(exist_ok=True)
            (source / "genai_config.json").write_text("{}")
            output.mkdir()
            request = StepRequest(
                source=source,
                output=output,
                precision=record.precisions[0],
                execution_provider=CPU,
                options={},
                work_dir=tmp_path / "work",
                progress=Progress(quiet=True),
            )
            (record.convert if hook_name == "slmk_converters" else record.quantize)(request)
        elif hook_name == "slmk_installers":
            assert isinstance(record.list(tmp_path), list)
            record.locate(tmp_path)
        elif hook_name == "slmk_runtimes":
            session = record.load(LoadRequest(path=tmp_path, execution_provider=CPU))
            try:
                assert all(isinstance(piece, str) for piece in session.generate([{"role": "user", "content": "hi"}]))
            finally:
                session.close()
        elif hook_name == "slmk_commands":
            result = CliRunner().invoke(record.load(), [])
            assert result.exit_code == 0, result.output
        elif hook_name == "slmk_model_sources":
            folder = tmp_path / "claimed"
            folder.mkdir()
            assert record.detect(tmp_path / "not-claimed") is False
            (folder / "delta.json").write_text('{"base": "' + str(tmp_path / "base") + '"}')
            assert record.detect(folder) is True
            assert record.describe(folder, None)["base"] == str(tmp_path / "base")
            assert record.materialize(folder, None, Progress(quiet=True)) == tmp_path / "base"
        elif hook_name == "slmk_executors":
            session = record.open(ExecutorOptions())
            try:
                outcome = session.submit(Task(name="add", function=operator.add, args=(2, 3))).result(timeout=60)
            finally:
                session.close()
            assert isinstance(outcome, TaskResult) and outcome.value == 5 and outcome.node
        elif hook_name == "slmk_settings":
            from slmk.config import load_settings

            settings = load_settings({}, environ={}, plugin_settings=records.values())
            assert settings[record.key] == record.default
        elif hook_name == "slmk_build_checks":
            source, build = tmp_path / "source", tmp_path / "build"
            source.mkdir()
            build.mkdir()
            (source / "tokenizer.json").write_text("{}")
            source_info = ModelInfo(path=source, format=FORMAT_HF, config={}, model_type="example", architectures=())
            check = record.start(ConvertRequest(source, precision="fp32"), source_info, make_registry())
            check.before("final-key")
            with pytest.raises(SlmkError):
                check.after(build)  # the build lost the tokenizer: refused
            (build / "tokenizer.json").write_text("{}")
            assert isinstance(check.after(build)["status"], str)
        elif hook_name == "slmk_template_engines":
            messages = [{"role": "user", "content": "hi"}]
            assert "hi" in record.render_chat_template("{{ messages[0].content }}", messages)
            assert isinstance(record.derive_prompt_template("", {}, source="example"), PromptTemplate)
            resolved = record.resolve_template(make_registry(), info, None)
            assert isinstance(resolved.template, PromptTemplate) and isinstance(resolved.source, str)
            assert isinstance(record.check_round_trip("", resolved.template, {}).notes, tuple)
        elif hook_name == "slmk_build_pipelines":
            source = tmp_path / "source"
            source.mkdir()
            (source / "config.json").write_text("{}")
            source_info = ModelInfo(path=source, format=FORMAT_HF, config={}, model_type="example", architectures=())
            request = ConvertRequest(source, tmp_path / "build", precision="fp32")
            plan = record.plan(make_registry(), source_info, CPU, request)
            assert plan.precision == "fp32" and plan.steps

            class Verdict:
                def before(self, final_key):
                    self.key = final_key

                def after(self, folder):
                    return {"status": "verified", "summary": f"checked {self.key}"}

            result = record.run(make_registry(), source_info, plan, request, Verdict())
            assert (result.output / "config.json").is_file()
            assert result.verification == {"status": "verified", "summary": "checked copy-fp32"}
        else:  # a new hook: teach this test how to use its records
            raise AssertionError(f"no check for the records of {hook_name}")


@pytest.mark.parametrize(("hook_name", "function"), HOOKS, ids=[name for name, _ in HOOKS])
def test_every_example_runs_and_yields_valid_records(hook_name, function, tmp_path):
    _, example = docgen.split_docstring(inspect.getdoc(function) or "")
    module = types.ModuleType(f"example_{hook_name}")
    exec(compile(example, f"<{hook_name} example>", "exec"), module.__dict__)
    registry = make_registry(module)
    records = registry.records(hook_name)
    assert records, f"the {hook_name} example yields no records"
    assert not [error for info in registry.plugin_infos() for error in info.errors]
    assert all(isinstance(record, RECORD_TYPES[hook_name]) for record in records.values())
    _check_records(hook_name, records, tmp_path)


def test_a_missing_example_is_caught():
    prose, example = docgen.split_docstring("Summary.\n\nNo example here.")
    assert prose == "Summary.\n\nNo example here." and example is None
    _, code = docgen.split_docstring("Summary.\n\nExample::\n\n    x = 1\n    y = 2\n\nAfter.")
    assert code == "x = 1\ny = 2"


def test_record_fields_and_their_comments_are_in_the_reference():
    text = docgen.render()
    assert "- `run_precisions`: `tuple[str, ...]` — what loads and runs on it" in text
    assert "- `explicit_only`: `bool` = `False` — planned only when named itself" in text
    for hook_name, _ in HOOKS:
        record = RECORD_TYPES[hook_name]
        assert f"## {hook_name}" in text
        if record is not click.Command:
            assert f"### {record.__name__}" in text
    assert isinstance(InstalledModel.ref, property)  # documented as a property
    assert "- `ref` (property): `str`" in text


# ------------------------------------------------------------------ the docs draw the tree as it is
PLUGIN_PACKAGES = sorted(p.name for p in (REPO / "plugins").iterdir() if (p / "__init__.py").is_file())
#: Repository paths as the docs cite them: a top-level folder of the repository, then a path.
#: A path with a wildcard or a placeholder (``plugins/slmk_*``, ``benchmarks/<name>.py``) is no single path.
_REPO_PATH = re.compile(
    r"(?<![\w./~-])((?:tests|benchmarks|plugins|kernel|examples|docs|plugin_template|\.ci)/[\w./-]*)(?![\w./*<{-])"
)
#: Paths the docs name that are not in this repository, and why.
_NOT_OURS = {
    ("docs/plugin-authors.md", "tests/test_plugin.py"): "a file of the package `slmk plugin new` generates",
}


def _readme_plugin_table() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| `slmk_")]
    assert rows, "README.md has no plugin table (rows starting with | `slmk_...`)"
    return "\n".join(rows)


@pytest.mark.parametrize("where", ["docs/architecture.md", "docs/plugins.md", "README.md plugin table"])
def test_every_plugin_package_is_named_in_the_docs(where):
    text = _readme_plugin_table() if where.startswith("README") else (REPO / where).read_text(encoding="utf-8")
    missing = [name for name in PLUGIN_PACKAGES if not re.search(rf"\b{name}\b", text)]
    assert PLUGIN_PACKAGES and not missing, f"{where} does not name the plugin packages {missing}"


def _cited_paths() -> list[tuple[str, str]]:
    cited = []
    for doc in [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"]:
        name = doc.relative_to(REPO).as_posix()
        cited += [(name, m.group(1)) for m in _REPO_PATH.finditer(doc.read_text(encoding="utf-8"))]
    for line in (REPO / "pyproject.toml").read_text(encoding="utf-8").splitlines():
        if "#" in line:  # comments only: the tables' own paths are checked by test_layout
            cited += [("pyproject.toml", m.group(1)) for m in _REPO_PATH.finditer(line[line.index("#") :])]
    return cited


def test_every_repository_path_the_docs_cite_exists():
    cited = _cited_paths()
    assert any(path == "tests/test_docs.py" for _, path in cited), "the path pattern finds nothing: fix the test"
    missing = sorted(
        f"{doc}: {path}"
        for doc, path in cited
        if not (REPO / path.rstrip(".,:;")).exists() and (doc, path) not in _NOT_OURS
    )
    assert not missing, "the docs cite paths that do not exist:\n" + "\n".join(missing)
