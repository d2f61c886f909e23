"""The microkernel's rules, checked on the source: who may import what, what the kernel
holds, and that its public functions say what they do (docs/architecture.md)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parent.parent
KERNEL = REPO / "kernel" / "slmk"
PLUGINS = sorted(p for p in (REPO / "plugins").iterdir() if p.is_dir() and p.name.startswith("slmk_"))
#: ``slmk.api`` and its submodules: what plugins may import of the kernel.
API_MODULES = {"slmk.api", *(f"slmk.api.{p.stem}" for p in (KERNEL / "api").glob("*.py") if p.stem != "__init__")}
HEAVY = ("torch", "transformers", "onnx", "onnxruntime", "onnxruntime_genai", "olive", "foundry_local_sdk", "ray")


def _python_sources(*roots: Path) -> list[Path]:
    files = []
    for root in roots:
        files += [p for p in root.rglob("*.py") if ".venv" not in p.parts]
        files += list(root.rglob("*.py.tmpl"))
    return files


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports (absolute names; relative imports are the file's own package)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".tmpl":  # placeholders are not Python: blank them out
        text = re.sub(r"\{\{ \w+ \}\}", "placeholder", text)
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, node.module)]
            if node.module == "slmk":  # `from slmk import api` is the api; `from slmk import app` is not
                found[-1] = (node.lineno, "slmk." + ",".join(alias.name for alias in node.names))
    return found


@pytest.mark.parametrize(
    "root", [*PLUGINS, REPO / "plugin_template", REPO / "examples"], ids=lambda p: p.relative_to(REPO).as_posix()
)
def test_plugins_template_and_examples_import_only_slmk_api(root):
    wrong = []
    for path in _python_sources(root):
        for line, module in _imports(path):
            if module == "slmk" or (module.startswith("slmk.") and module not in API_MODULES):
                wrong.append(f"{path.relative_to(REPO)}:{line}: {module}")
    assert not wrong, "import slmk.api and its submodules, nothing else of the kernel:\n" + "\n".join(wrong)


@pytest.mark.parametrize("plugin", PLUGINS, ids=lambda p: p.name)
def test_no_plugin_imports_another(plugin):
    wrong = [
        f"{path.relative_to(REPO)}:{line}: {module}"
        for path in _python_sources(plugin)
        for line, module in _imports(path)
        if module.split(".")[0].startswith("slmk_") and module.split(".")[0] != plugin.name
    ]
    assert not wrong, "plugins share through slmk.api or a record, never by importing each other:\n" + "\n".join(wrong)


def test_the_kernel_imports_no_plugin_and_nothing_heavy_at_module_level():
    wrong = []
    for path in _python_sources(KERNEL):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:  # module level only: functions may import what they need
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top.startswith("slmk_") or top in HEAVY:
                    wrong.append(f"{path.relative_to(REPO)}:{node.lineno}: {name}")
    assert not wrong, "\n".join(wrong)


def test_every_public_kernel_function_has_a_docstring():
    missing = []
    for path in _python_sources(KERNEL):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            members = [node]
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                members += [m for m in node.body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))]
            for member in members:
                if not isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    continue
                if member.name.startswith("_") or any(
                    isinstance(d, ast.Name) and d.id == "hookspec" for d in getattr(member, "decorator_list", [])
                ):
                    continue
                if ast.get_docstring(member) is None and not _is_click_wrapper(member):
                    missing.append(f"{path.relative_to(REPO)}:{member.lineno}: {member.name}")
    assert not missing, "public kernel functions without a docstring:\n" + "\n".join(missing)


def _is_click_wrapper(node: ast.AST) -> bool:
    # a click option decorator factory (f -> f) documents itself through its options' help
    return isinstance(node, ast.FunctionDef) and [a.arg for a in node.args.args] == ["f"]


@pytest.mark.parametrize("module_name", sorted(API_MODULES))
def test_api_all_names_exist_and_are_unique(module_name):
    import importlib

    api = importlib.import_module(module_name)
    assert len(api.__all__) == len(set(api.__all__))
    assert [name for name in api.__all__ if not hasattr(api, name)] == []


def test_every_plugin_package_is_packaged_and_registered():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    packages = project["tool"]["setuptools"]["packages"]
    package_dir = project["tool"]["setuptools"]["package-dir"]
    entry_points = project["project"]["entry-points"]["slmk"]
    for plugin in PLUGINS:
        assert plugin.name in packages, f"{plugin.name} is missing from [tool.setuptools] packages"
        assert package_dir[plugin.name] == f"plugins/{plugin.name}"
        assert plugin.name in entry_points.values(), f"{plugin.name} has no entry point in the slmk group"
        for sub in (p for p in plugin.iterdir() if (p / "__init__.py").is_file()):
            assert f"{plugin.name}.{sub.name}" in packages, f"{plugin.name}.{sub.name} is not packaged"


def test_every_test_that_sends_sigint_restores_its_default_in_the_child():
    """A suite run from a background job has SIGINT ignored, and children inherit that: a test
    that interrupts a child must start it with ``preexec_fn=default_signals`` (tests/_signals.py)."""
    wrong = []
    for path in sorted((REPO / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.FunctionDef) or not any(
                isinstance(n, ast.Attribute) and n.attr == "SIGINT" for n in ast.walk(node)
            ):
                continue
            for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
                popen = isinstance(call.func, ast.Attribute) and call.func.attr == "Popen"
                if popen and not any(k.arg == "preexec_fn" for k in call.keywords):
                    wrong.append(f"{path.relative_to(REPO)}:{call.lineno}: {node.name}")
    assert not wrong, "children a test interrupts need preexec_fn=default_signals:\n" + "\n".join(wrong)
