"""The CLI: verbs, help, light start-up, and one clear line for each bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
from _signals import default_signals

HEAVY = (
    "torch",
    "transformers",
    "onnx",
    "onnxruntime",
    "onnxruntime_genai",
    "olive",
    "foundry_local_sdk",
    "pytest",
    "ray",
    "fastapi",
)

_PROBE = """
import json, sys
from slmk.cli import main
sys.argv = ["slmk", *json.loads(sys.argv[1])]
try:
    main()
except SystemExit:
    pass
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY_LIST))
print("HEAVY=" + json.dumps(heavy), file=sys.stderr)
""".replace("HEAVY_LIST", repr(list(HEAVY)))


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["plugins"],
        ["plugins", "--json"],
        ["doctor"],
        ["doctor", "--json"],
        ["convert", "--help"],
        ["config", "keys"],
    ],
)
def test_light_commands_import_no_heavy_library(args):
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(args)], capture_output=True, text=True, timeout=120
    )
    line = [x for x in result.stderr.splitlines() if x.startswith("HEAVY=")][-1]
    assert json.loads(line.removeprefix("HEAVY=")) == [], f"slmk {' '.join(args)} imported {line}"


def test_help_lists_every_verb(run_slmk):
    result = run_slmk("--help")
    assert result.returncode == 0
    for verb in (
        "convert",
        "demo",
        "doctor",
        "init",
        "inspect",
        "install",
        "list",
        "plugins",
        "remove",
        "run",
        "template",
    ):
        assert f"  {verb} " in result.stdout, verb


@pytest.mark.parametrize(
    "verb", ["convert", "demo", "doctor", "init", "inspect", "install", "list", "plugins", "remove", "run"]
)
def test_each_verb_has_help(run_slmk, verb):
    result = run_slmk(verb, "--help")
    assert result.returncode == 0 and "Usage: slmk" in result.stdout and len(result.stdout.splitlines()) > 4


@pytest.mark.parametrize(
    ("args", "option", "hook_name"),
    [
        (("run", "--help"), "--runtime", "slmk_runtimes"),
        (("bench", "--help"), "--runtime", "slmk_runtimes"),
        (("install", "--help"), "--installer", "slmk_installers"),
        (("list", "--help"), "--installer", "slmk_installers"),
    ],
)
def test_record_options_list_what_the_plugins_contribute_and_the_default(args, option, hook_name):
    from click.testing import CliRunner

    from slmk.cli import cli
    from slmk.plugins import get_registry

    registry = get_registry()
    names = ", ".join(sorted(registry.records(hook_name)))
    assert hook_name != "slmk_installers" or names, "a built-in installer exists"
    assert hook_name != "slmk_runtimes" or {"ortgenai", "foundry", "openai-endpoint"} <= set(names.split(", "))
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # help lines wrap
    default = registry.default_name(hook_name)
    assert f"{option} NAME {option[2:].capitalize()} plugin: {names} [default: " in text, text
    assert f"else {default}]." in text, text


def _one_error_line(result) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    errors = [x for x in result.stderr.splitlines() if x.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_missing_folder(run_slmk, tmp_path):
    line = _one_error_line(run_slmk("convert", str(tmp_path / "nope"), "-o", str(tmp_path / "out")))
    assert "does not exist" in line


def test_folder_without_config(run_slmk, tmp_path):
    (tmp_path / "empty").mkdir()
    line = _one_error_line(run_slmk("convert", str(tmp_path / "empty"), "-o", str(tmp_path / "out")))
    assert "has no config.json" in line


def test_unsupported_architecture_is_refused_before_any_work(run_slmk, tmp_path, tiny_model_dir):
    model = tmp_path / "weird"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    config["architectures"] = ["WeirdNetForCausalLM"]
    config["model_type"] = "weirdnet"
    (model / "config.json").write_text(json.dumps(config))
    line = _one_error_line(run_slmk("convert", str(model), "-o", str(tmp_path / "out")))
    assert "WeirdNetForCausalLM" in line
    assert not (tmp_path / "out").exists()


def test_unknown_precision_and_ep(run_slmk, tmp_path, tiny_model_dir):
    line = _one_error_line(run_slmk("convert", str(tiny_model_dir), "-p", "int3", "-o", str(tmp_path / "o")))
    assert "int3" in line and "int4" in line
    line = _one_error_line(run_slmk("convert", str(tiny_model_dir), "--ep", "tpu", "-o", str(tmp_path / "o")))
    assert "unknown execution provider 'tpu'" in line and "cpu" in line


def test_precision_the_ep_cannot_run_is_refused_with_alternatives(run_slmk, tmp_path, tiny_model_dir):
    line = _one_error_line(
        run_slmk("convert", str(tiny_model_dir), "-p", "fp16", "--ep", "cpu", "-o", str(tmp_path / "o"))
    )
    assert "fp16 builds for cpu but does not load there" in line and "int4, int8, fp32" in line
    assert not (tmp_path / "o").exists()


def test_existing_output_needs_force(run_slmk, tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    line = _one_error_line(run_slmk("convert", str(tiny_model_dir), "-o", str(out)))
    assert "already exists" in line and "--force" in line
    assert (out / "keep.txt").read_text() == "mine", "nothing of the user's is lost"


def test_debug_shows_the_traceback(run_slmk, tmp_path):
    result = run_slmk("--debug", "convert", str(tmp_path / "nope"), "-o", str(tmp_path / "o"))
    assert result.returncode == 2 and "Traceback" in result.stderr


@pytest.mark.slow
def test_interrupted_conversion_leaves_no_output_and_rerun_works(tmp_path, tiny_model_dir):
    """Ctrl-C (SIGINT) and SIGKILL mid-conversion: nothing under the final name, a rerun succeeds."""
    env = {**os.environ, "SLMK_CACHE_DIR": str(tmp_path / "cache")}
    out = tmp_path / "out"
    for sig in (signal.SIGINT, signal.SIGKILL):
        # the converter has written the step into a temporary folder and is paused before committing it
        paused = {**env, "SLMK_TEST_PAUSE_AT": "step-written:convert", "SLMK_TEST_PAUSE_S": "300"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "slmk", "convert", str(tiny_model_dir), "-p", "fp32", "-o", str(out)],
            env=paused,
            preexec_fn=default_signals,  # Ctrl-C works even when the suite runs with SIGINT ignored
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        seen = []
        for line in proc.stderr:  # blocks until the process prints; it prints the pause line before pausing
            seen.append(line)
            if line.startswith("SLMK_TEST_PAUSED step-written:convert"):
                break
        assert seen and seen[-1].startswith("SLMK_TEST_PAUSED"), "".join(seen)
        half_steps = list((tmp_path / "cache" / "steps").glob(".slmk-tmp-*"))
        assert any(any(p.rglob("*.onnx")) for p in half_steps), "precondition: a half-written step exists"
        proc.send_signal(sig)
        rest = proc.stderr.read()
        proc.wait(timeout=120)
        stderr = "".join(seen) + rest
        assert proc.returncode != 0
        if sig == signal.SIGINT:
            assert "interrupted" in stderr and "Traceback" not in stderr
        assert not out.exists(), "no half-written output under the final name"
        assert not any(p.name == "step.json" for p in (tmp_path / "cache" / "steps").rglob("step.json"))
    result = subprocess.run(
        [sys.executable, "-m", "slmk", "convert", str(tiny_model_dir), "-p", "fp32", "-o", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert (out / "genai_config.json").is_file()
    assert not list((tmp_path / "cache" / "steps").glob(".slmk-tmp-*")), "stale temporary folders were cleaned"
