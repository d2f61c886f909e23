"""`slmk plugin new`: every kind renders, installs as a real distribution (dist-info with
its `slmk` entry point), shows in `slmk plugins`, passes its own tests, and works in the
real commands; the Granite example works as an installed package.

Installs go to a temporary ``pip install --target`` folder that subprocesses put on
PYTHONPATH, so the test venv is never changed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import pytest
from slmk_authoring import scaffold

from slmk.errors import SlmkError, UsageError

REPO = Path(__file__).resolve().parent.parent
GRANITE = REPO / "examples" / "slmk-granite"
KINDS = scaffold.KIND_NAMES
#: The record each generated plugin contributes is named after the plugin: "kind-<kind>".
NAMES = {kind: f"kind-{kind}" for kind in KINDS}


def slmk(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, check: bool = True):
    done = subprocess.run(
        [sys.executable, "-m", "slmk", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"slmk {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def pythonpath(*folders: Path) -> dict[str, str]:
    existing = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": os.pathsep.join([*map(str, folders), *([existing] if existing else [])])}


def pip_install_target(target: Path, *packages: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "--target",
            str(target),
            *map(str, packages),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )


def copy_package(source: Path, target: Path) -> Path:
    """A clean copy: pip builds in the source tree (build/, *.egg-info), never in the repository."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    return target


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("scaffold")


@pytest.fixture(scope="module")
def packages(work) -> dict[str, Path]:
    """One generated package per kind (through the real CLI), and a copy of the Granite example."""
    made = {}
    for kind in KINDS:
        done = slmk("plugin", "new", NAMES[kind], "--kind", kind, "-o", str(work / "src"), "--json")
        made[kind] = Path(json.loads(done.stdout)["path"])
    made["granite"] = copy_package(GRANITE, work / "src" / "slmk-granite")
    return made


@pytest.fixture(scope="module")
def site(work, packages) -> Path:
    target = work / "site"
    pip_install_target(target, *packages.values())
    return target


# ------------------------------------------------------------------ rendering
@pytest.mark.parametrize(
    "name", ["My-Family", "my_family", "1family", "-family", "family-", "my--family", "slmk-family", "x" * 41, ""]
)
def test_bad_names_are_refused_with_a_hint(name):
    with pytest.raises(UsageError) as raised:
        scaffold.validate_name(name)
    assert raised.value.hint


def test_a_bad_name_is_one_line_and_exit_code_2(tmp_path):
    done = slmk("plugin", "new", "My_Family", "--kind", "family", "-o", str(tmp_path), check=False)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "lowercase letters" in done.stderr
    assert not list(tmp_path.iterdir())


def test_an_existing_folder_is_refused_unless_forced(tmp_path):
    slmk("plugin", "new", "again", "--kind", "probe", "-o", str(tmp_path))
    marker = tmp_path / "slmk-again" / "my-edit.txt"
    marker.write_text("kept")
    refused = slmk("plugin", "new", "again", "--kind", "probe", "-o", str(tmp_path), check=False)
    assert refused.returncode == 2 and "already exists" in refused.stderr and "--force" in refused.stderr
    assert marker.read_text() == "kept"
    slmk("plugin", "new", "again", "--kind", "family", "-o", str(tmp_path), "--force")
    assert not marker.exists()
    assert "slmk_model_families" in (tmp_path / "slmk-again" / "src" / "slmk_again" / "hooks.py").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".slmk-tmp-")]


def test_names_taken_by_installed_plugins_are_refused_or_warned_about(tmp_path):
    with pytest.raises(UsageError, match="'system' is already the entry point of slmk"):
        scaffold.new_plugin("system", "probe", tmp_path)
    made = scaffold.new_plugin("qwen2", "family", tmp_path)  # a built-in family's record name
    [note] = made.notes
    assert "plugin 'families' already contributes the ModelFamily 'qwen2'" in note
    assert "SLMK_DISABLE_PLUGINS=families" in note


def test_an_unknown_placeholder_names_the_template_file():
    with pytest.raises(SlmkError, match=r"kinds/x.py.tmpl: unknown placeholder \{\{ nmae \}\}"):
        scaffold.render_text("value = '{{ nmae }}'", {"name": "x"}, "kinds/x.py.tmpl")


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_renders_a_complete_package(kind):
    files = scaffold.render_files("my-thing", kind)
    assert set(files) == {
        ".gitignore",
        "README.md",
        "pyproject.toml",
        "src/slmk_my_thing/__init__.py",
        "src/slmk_my_thing/hooks.py",
        "tests/test_plugin.py",
    }
    assert '[project.entry-points.slmk]\nmy-thing = "slmk_my_thing"' in files["pyproject.toml"]
    hook = scaffold.KINDS[kind].hook
    assert f"from .hooks import {hook}" in files["src/slmk_my_thing/__init__.py"]
    assert f"def {hook}(" in files["src/slmk_my_thing/hooks.py"]
    tomllib.loads(files["pyproject.toml"])
    for path, text in files.items():
        if path.endswith(".py"):
            compile(text, path, "exec")


def test_the_granite_example_is_what_the_generator_writes_plus_granite_data():
    files = scaffold.render_files("granite", "family")
    for shared in (".gitignore", "pyproject.toml", "src/slmk_granite/__init__.py"):
        assert (GRANITE / shared).read_text() == files[shared], f"{shared} drifted from plugin_template/"
    own_section = re.compile(r"## What it does.*?## Layout", re.DOTALL)  # the README's Granite part
    assert own_section.sub("", (GRANITE / "README.md").read_text()) == own_section.sub("", files["README.md"])


# ------------------------------------------------------------------ installed
@pytest.mark.slow
def test_every_generated_plugin_installs_with_its_entry_point(site, packages):
    for kind in packages:
        module = "slmk_granite" if kind == "granite" else f"slmk_{NAMES[kind].replace('-', '_')}"
        [dist_info] = site.glob(f"{module}-0.1.0.dist-info")
        entry_points = (dist_info / "entry_points.txt").read_text()
        assert "[slmk]" in entry_points and f"= {module}" in entry_points


def test_slmk_plugins_lists_every_generated_plugin(site):
    done = slmk("plugins", "--json", env=pythonpath(site))
    infos = {info["name"]: info for info in json.loads(done.stdout)}
    for kind in KINDS:
        info = infos[NAMES[kind]]
        assert info["loaded"] and not info["errors"], info
        assert info["distribution"].replace("_", "-") == f"slmk-{NAMES[kind]}" and info["version"] == "0.1.0"
        assert info["records"] == {scaffold.KINDS[kind].hook: [NAMES[kind]]}
    assert infos["granite"]["records"] == {"slmk_model_families": ["granite-plugin"]}
    assert not [name for name, info in infos.items() if info["errors"]]  # the built-ins are unharmed


def test_slmk_doctor_runs_the_generated_probe_and_provider(site):
    env = {**pythonpath(site), "SLMK_KIND_PROBE_MIN_FREE_GB": "0", "SLMK_OVERRIDE_KIND_HARDWARE": "1"}
    checks = json.loads(slmk("doctor", "--json", env=env, check=False).stdout)["checks"]
    by_name = {check["name"]: check for check in checks}
    assert by_name["kind-probe"]["status"] == "ok" and "GB free for builds" in by_name["kind-probe"]["detail"]
    assert by_name["ep:kind-hardware"]["status"] == "ok"
    assert "forced on by SLMK_OVERRIDE_KIND_HARDWARE" in by_name["ep:kind-hardware"]["detail"]


@pytest.mark.parametrize("kind", [*KINDS, "granite"])
def test_the_generated_tests_pass_as_generated(kind, site, packages, request):
    env = {**os.environ, **pythonpath(site)}
    if kind == "runtime":  # a real build, so that its generation test runs rather than skips
        env["SLMK_TEST_BUILD"] = str(request.getfixturevalue("tiny_build")("int4"))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=packages[kind],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-2000:]


def test_an_editable_install_is_listed_and_follows_source_edits(work, packages):
    """`pip install -e` into a throwaway venv layered on the test venv (a .pth adds its site-packages)."""
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    test_venv = sysconfig.get_path("purelib")
    (purelib / "_slmk_test_overlay.pth").write_text(f"import site; site.addsitedir({test_venv!r})\n")
    package = copy_package(packages["family"], work / "editable" / "slmk-kind-family")
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "-e",
            str(package),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )

    def family_description() -> str:
        done = subprocess.run(
            [str(python), "-m", "slmk", "plugins", "--json"], capture_output=True, text=True, timeout=120, check=True
        )
        [info] = [i for i in json.loads(done.stdout) if i["name"] == "kind-family"]
        assert info["loaded"] and info["records"] == {"slmk_model_families": ["kind-family"]}, info
        code = "from slmk.plugins import get_registry; print(get_registry().model_families['kind-family'].description)"
        return subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.strip()

    assert family_description() == "Kind Family models (slmk-kind-family)"
    hooks = package / "src" / "slmk_kind_family" / "hooks.py"
    hooks.write_text(hooks.read_text().replace("Kind Family models", "Edited models"))
    assert family_description() == "Edited models (slmk-kind-family)"


# ------------------------------------------------------------------ in the real commands
@pytest.mark.slow
def test_generated_converter_quantizer_installer_and_runtime_in_real_commands(
    site, tiny_build, tiny_model_dir, tmp_path
):
    env = pythonpath(site)
    question = ["--prompt", "What is Veltra?", "--max-new-tokens", "12", "--temperature", "0", "--json"]
    # converter: a model folder that ships its int4 build in onnx/int4/
    source = tmp_path / "model"
    shutil.copytree(tiny_model_dir, source)
    shutil.copytree(tiny_build("int4"), source / "onnx" / "int4")
    slmk("-q", "convert", str(source), "-p", "int4", "--via", "kind-converter", "-o", str(tmp_path / "conv"), env=env)
    answer = json.loads(slmk("run", str(tmp_path / "conv"), *question, env=env).stdout)
    assert answer["answer"] and answer["stats"]["generated_tokens"] >= 1
    # quantizer: fp32 conversion by the model builder, then int8 by the generated quantizer
    slmk(
        "-q",
        "convert",
        str(tiny_model_dir),
        "-p",
        "int8",
        "--via",
        "kind-quantizer",
        "-o",
        str(tmp_path / "q"),
        env=env,
    )
    build = json.loads((tmp_path / "q" / "slmk_build.json").read_text())
    assert [(s["tool"], s["precision"]) for s in build["steps"]] == [
        ("ortgenai-builder", "fp32"),
        ("kind-quantizer", "int8"),
    ]
    # runtime: the generated runtime answers from the quantized build
    answer = json.loads(slmk("run", str(tmp_path / "q"), "--runtime", "kind-runtime", *question, env=env).stdout)
    assert answer["answer"] and 1 <= answer["stats"]["generated_tokens"] <= 12
    # installer: install, list, run by name, remove
    installs = ["--installer", "kind-installer", "--cache-dir", str(tmp_path / "installs")]
    installed = json.loads(slmk("install", str(tmp_path / "q"), "--name", "tiny", *installs, "--json", env=env).stdout)
    assert (installed["ref"], installed["precision"]) == ("tiny:1", "int8")
    listed = json.loads(slmk("list", *installs, "--json", env=env).stdout)
    assert [m["ref"] for m in listed] == ["tiny:1"]
    by_name = slmk(
        "run",
        "tiny",
        "--cache-dir",
        str(tmp_path / "installs"),
        *question,
        env={**env, "SLMK_INSTALLER": "kind-installer"},
    )
    assert json.loads(by_name.stdout)["answer"]
    slmk("remove", "tiny", *installs, env=env)
    assert json.loads(slmk("list", *installs, "--json", env=env).stdout) == []


def test_the_granite_family_claims_granite_models_and_round_trips(site, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(site))  # the installed copy, not the source tree
    from slmk_granite import hooks

    from slmk.api.templates import check_round_trip

    report = check_round_trip(hooks.CHAT_TEMPLATE, hooks.PROMPT_TEMPLATE, hooks.SPECIAL_TOKENS)
    assert set(report.checked) == {"one-turn", "with-system", "two-turn", "system-two-turn"}
    model = tmp_path / "granite"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "granite", "architectures": ["GraniteForCausalLM"]}))
    (model / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": hooks.CHAT_TEMPLATE, "eos_token": "<|end_of_text|>"})
    )
    shown = json.loads(slmk("template", "show", str(model), "--json", env=pythonpath(site)).stdout)
    assert shown["family"] == "granite-plugin"  # the plugin outscores the built-in granite family
    assert shown["prompt_template"] == hooks.PROMPT_TEMPLATE.to_foundry()
    assert not [note for note in shown.get("notes", []) if "round-trip" in note]
    without = json.loads(slmk("template", "show", str(model), "--json").stdout)
    assert without["family"] == "granite"  # without the plugin, slmk's built-in Granite family


@pytest.mark.slow
def test_a_tiny_granite_model_builds_installs_and_runs_with_the_plugin(site, tmp_path, monkeypatch, tiny_model_dir):
    """A random-weight GraniteForCausalLM (the real architecture, tiny) through convert,
    the Foundry Local install (which enforces the template round trip) and run."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    monkeypatch.syspath_prepend(str(site))
    from slmk_granite.hooks import CHAT_TEMPLATE

    tiny = tiny_model_dir  # its tokenizer serves the random-weight model
    model = tmp_path / "granite"
    vocab = json.loads((tiny / "tokenizer.json").read_text())
    torch.manual_seed(0)
    config = transformers.GraniteConfig(
        vocab_size=len(vocab["model"]["vocab"]) + len(vocab.get("added_tokens", [])),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        architectures=["GraniteForCausalLM"],
    )
    transformers.GraniteForCausalLM(config).save_pretrained(model)
    shutil.copy(tiny / "tokenizer.json", model)
    tokenizer_config = json.loads((tiny / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**tokenizer_config, "chat_template": CHAT_TEMPLATE}))
    env = pythonpath(site)
    slmk("-q", "convert", str(model), "-p", "int4", "-o", str(tmp_path / "build"), env=env)
    installed = json.loads(slmk("install", str(tmp_path / "build"), "--name", "tiny-granite", "--json", env=env).stdout)
    inference_model = json.loads((Path(installed["path"]) / "inference_model.json").read_text())
    assert inference_model["PromptTemplate"]["prompt"].endswith("<|start_of_role|>assistant<|end_of_role|>")
    answer = json.loads(
        slmk("run", "tiny-granite", "--prompt", "Hello", "--max-new-tokens", "4", "--json", env=env).stdout
    )
    assert answer["stats"]["generated_tokens"] >= 1
    slmk("remove", "tiny-granite", env=env)


# ------------------------------------------------------------------ a broken plugin
def test_a_plugin_that_raises_in_its_hook_is_named_and_the_others_keep_working(work, site, tmp_path):
    broken = scaffold.new_plugin("kaput", "probe", work / "broken-src").path
    hooks = broken / "src" / "slmk_kaput" / "hooks.py"
    hooks.write_text(
        hooks.read_text() + '\n\n@hookimpl\ndef slmk_probes():\n    raise RuntimeError("exploded on purpose")\n'
    )
    broken_site = work / "broken-site"
    pip_install_target(broken_site, broken)
    env = {**pythonpath(site, broken_site), "SLMK_KIND_PROBE_MIN_FREE_GB": "0"}
    infos = {i["name"]: i for i in json.loads(slmk("plugins", "--json", env=env).stdout)}
    [error] = infos["kaput"]["errors"]
    assert "'kaput'" in error and "slmk_probes" in error and "exploded on purpose" in error
    assert infos["kind-probe"]["records"] == {"slmk_probes": ["kind-probe"]} and not infos["kind-probe"]["errors"]
    text = slmk("plugins", env=env).stdout
    assert "kaput [error]" in text and "exploded on purpose" in text
    checks = json.loads(slmk("doctor", "--json", env=env, check=False).stdout)["checks"]
    [reported] = [c for c in checks if c["name"] == "plugin:kaput"]
    assert reported["status"] == "warn" and "slmk_probes" in reported["detail"]
    assert "SLMK_DISABLE_PLUGINS=kaput" in reported["fix"]
    assert [c["status"] for c in checks if c["name"] == "kind-probe"] == ["ok"]
    listed = slmk("plugins", "--json", env={**env, "SLMK_DISABLE_PLUGINS": "kaput"}).stdout
    disabled = {i["name"]: i for i in json.loads(listed)}
    assert not disabled["kaput"]["loaded"] and disabled["kaput"]["errors"] == ["disabled by SLMK_DISABLE_PLUGINS"]
