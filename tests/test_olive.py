"""Olive inside slmk, for real: olive-ai 0.13 quantizes the tiny model on CPU, the ONNX
Runtime GenAI builder converts its weights, and the runtime generates from the result.

Olive's own ModelBuilder pass cannot run with onnxruntime-genai 0.18, so the tutorial's
workflow file is the failing case; no Olive-only pass chain produces an ORT GenAI folder
with these versions, so the working workflow is a quantization pass, and its error says
what it produced.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slmk import app
from slmk.errors import SlmkError, StepFailed, UsageError

pytestmark = [pytest.mark.usefixtures("one_torch_thread")]

DATA = Path(__file__).resolve().parent / "data" / "olive"


def _generate(build: Path, question: str = "Hello!") -> int:
    """Load the build with the ortgenai runtime and generate; returns the tokens generated."""
    session = app.open_session(build)
    try:
        text = "".join(session.generate([{"role": "user", "content": question}], max_new_tokens=12, do_sample=False))
        assert isinstance(text, str)
        return session.last_stats.generated_tokens
    finally:
        session.close()


def _perplexity(build: Path, text: str) -> tuple[float, int]:
    session = app.open_session(build)
    try:
        nll, tokens = session.score(text)
    finally:
        session.close()
    return math.exp(nll / tokens), tokens


def _accuracy(build: Path, eval_records: list[dict]) -> float:
    """Share of eval questions whose greedy answer holds the expected text."""
    session = app.open_session(build)
    try:
        right = sum(
            record["expected"].lower()
            in "".join(session.generate(record["messages"], max_new_tokens=32, do_sample=False)).lower()
            for record in eval_records
        )
    finally:
        session.close()
    return right / len(eval_records)


@pytest.fixture
def clean_cwd(tmp_path, monkeypatch) -> Path:
    """Run in an empty working directory, so anything Olive drops there is seen."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


@pytest.fixture(scope="module")
def olive_rtn_build(tiny_model_dir, session_tmp) -> Path:
    out = session_tmp / "olive" / "tiny-olive-rtn-int4"
    result = app.convert(tiny_model_dir, out, precision="int4", via="olive", force=True)
    assert [(s.kind, s.tool, s.status) for s in result.steps] == [
        ("quantize", "olive-rtn", "ran"),
        ("convert", "ortgenai-builder", "ran"),
    ]
    return out


# ------------------------------------------------------------------ Method 1: --via olive
def test_via_olive_int4_loads_generates_and_keeps_cwd_clean(olive_rtn_build, tiny_model_dir, clean_cwd):
    plan = app.convert(tiny_model_dir, clean_cwd / "unused", precision="int4", via="olive", plan_only=True)
    assert plan.shape == "quantize-convert"
    assert [step.tool for step in plan.steps] == ["olive-rtn", "ortgenai-builder"]
    build = json.loads((olive_rtn_build / "slmk_build.json").read_text())
    assert build["precision"] == "int4"
    assert (olive_rtn_build / "genai_config.json").is_file() and (olive_rtn_build / "model.onnx").is_file()
    assert _generate(olive_rtn_build) > 0
    # An identical convert does no work: every step comes from the step cache.
    again = app.convert(tiny_model_dir, clean_cwd / "again", precision="int4", via="olive")
    assert [s.status for s in again.steps] == ["cached", "cached"]
    assert not (clean_cwd / ".olive-cache").exists()
    assert sorted(p.name for p in clean_cwd.iterdir()) == ["again"]


def test_via_olive_int8(tiny_model_dir, tmp_path):
    result = app.convert(tiny_model_dir, tmp_path / "int8", precision="int8", via="olive")
    assert [(s.tool, s.precision) for s in result.steps] == [("olive-rtn", "int8"), ("ortgenai-builder", "int8")]
    quantized = json.loads((Path(result.steps[0].path) / "model" / "config.json").read_text())["quantization_config"]
    assert quantized["bits"] == 8 and quantized["symmetric"] is False
    assert _generate(result.output) > 0


def test_gptq_without_calibration_is_refused(tiny_model_dir, tmp_path):
    with pytest.raises(UsageError, match="GPTQ needs calibration data"):
        app.convert(tiny_model_dir, tmp_path / "out", precision="int4", via="olive-gptq")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_gptq_calibrated_on_own_data_vs_rtn(
    olive_rtn_build, tiny_build, tiny_model_dir, tiny_eval, tmp_path, clean_cwd
):
    data = tiny_model_dir.parent / "data"
    plan = app.convert(
        tiny_model_dir,
        tmp_path / "gptq",
        precision="int4",
        via="olive",
        calibration=data / "train.jsonl",
        plan_only=True,
    )
    assert [step.tool for step in plan.steps] == ["olive-gptq", "ortgenai-builder"]
    start = time.perf_counter()
    result = app.convert(
        tiny_model_dir, tmp_path / "gptq", precision="int4", via="olive", calibration=data / "train.jsonl"
    )
    gptq_seconds = time.perf_counter() - start
    assert [s.tool for s in result.steps] == ["olive-gptq", "ortgenai-builder"]
    quantized = json.loads((Path(result.steps[0].path) / "model" / "config.json").read_text())["quantization_config"]
    assert quantized["quant_method"] == "olive" and quantized["bits"] == 4
    assert _generate(result.output) > 0

    heldout = (data / "heldout.txt").read_text(encoding="utf-8")
    gptq_ppl, tokens = _perplexity(result.output, heldout)
    rtn_ppl, rtn_tokens = _perplexity(olive_rtn_build, heldout)
    fp32_ppl, _ = _perplexity(tiny_build("fp32"), heldout)
    assert tokens == rtn_tokens > 0
    assert math.isfinite(gptq_ppl) and math.isfinite(rtn_ppl)
    record = {
        "heldout_tokens": tokens,
        "fp32_ppl": round(fp32_ppl, 4),
        "olive_rtn_int4_ppl": round(rtn_ppl, 4),
        "olive_gptq_int4_ppl": round(gptq_ppl, 4),
        "gptq_build_seconds": round(gptq_seconds, 1),
        "olive_rtn_int4_eval_accuracy": _accuracy(olive_rtn_build, tiny_eval),
        "olive_gptq_int4_eval_accuracy": _accuracy(result.output, tiny_eval),
    }
    print(f"\nOlive int4 on the tiny model: {json.dumps(record)}")
    (tmp_path / "perplexity.json").write_text(json.dumps(record, indent=2))
    assert not (clean_cwd / ".olive-cache").exists()


@pytest.mark.slow
def test_killed_convert_resumes_from_the_quantize_step(tiny_model_dir, tmp_path):
    """SIGKILL during the convert step; the rerun reuses the finished quantize step."""
    cache, out, home_cache = tmp_path / "cache", tmp_path / "out", tmp_path / "xdg-cache"
    env = {**os.environ, "SLMK_CACHE_DIR": str(cache), "XDG_CACHE_HOME": str(home_cache)}
    script = (
        "import sys\nfrom slmk.app import convert\nconvert(sys.argv[1], sys.argv[2], precision='int4', via='olive')\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(tiny_model_dir), str(out)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    steps = cache / "steps"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and process.poll() is None:
            quantized = any(steps.glob("*-quantize-olive-rtn/step.json"))
            converting = any(steps.glob(".slmk-tmp-*-convert-ortgenai-builder"))
            if quantized and converting:
                break
            time.sleep(0.005)
        assert process.poll() is None, f"convert ended before it could be killed: {process.stderr.read()[-2000:]!r}"
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=60)
    assert not out.exists(), "a killed convert left a half-written output"
    assert not any(steps.glob("*-convert-ortgenai-builder/step.json"))

    result = app.convert(tiny_model_dir, out, precision="int4", via="olive", cache_dir=cache)
    assert [(s.tool, s.status) for s in result.steps] == [("olive-rtn", "cached"), ("ortgenai-builder", "ran")]
    assert not [p for p in steps.iterdir() if p.name.startswith(".slmk-tmp-")]
    assert _generate(out) > 0
    # Olive's heartbeat (written even with OLIVE_DISABLE_TELEMETRY=1 in 0.13) stays suppressed.
    assert not (home_cache / "Microsoft").exists()
    assert not (tmp_path / ".olive-cache").exists()


# ------------------------------------------------------------------ Method 2: --olive-config
@pytest.mark.slow
def test_tutorial_workflow_fails_naming_the_model_builder_pass(run_slmk, tmp_path):
    """The tutorial's finetuned_conversion_config.json: a ModelBuilder pass, relative cache and output dirs."""
    result = run_slmk(
        "convert",
        "--olive-config",
        str(DATA / "finetuned_conversion_config.json"),
        "-o",
        str(tmp_path / "out"),
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: Olive pass 'builder' (ModelBuilder) failed"), result.stderr
    assert "onnxruntime_genai.models.quantized_model" in error
    assert "slmk convert MODEL -p int4 --via olive" in error
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
    # The workflow's own "cache" and "output_dir" (relative to the cwd) are never written.
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_quantization_workflow_says_what_it_produced(tiny_model_dir, tmp_path, clean_cwd):
    with pytest.raises(StepFailed) as failure:
        app.convert(
            tiny_model_dir,
            tmp_path / "out",
            via="olive-workflow",
            options={"olive_config": str(DATA / "rtn_only.json")},
        )
    message = failure.value.one_line()
    assert "produced a Hugging Face folder of 4-bit weights (olive quantization, group size 32)" in message
    assert "after pass 'quantize' (Rtn)" in message and "no genai_config.json" in message
    assert "--via olive" in message
    assert not (tmp_path / "out").exists()
    assert list(clean_cwd.iterdir()) == []


def test_pruned_pass_is_named_although_olive_returns_normally(tiny_model_dir, tmp_path, clean_cwd):
    """Olive prunes an invalid pass config and returns without raising: the second pass is named."""
    with pytest.raises(StepFailed, match=r"Olive pass 'gptq' \(Gptq\) failed .*without an output model"):
        app.convert(
            tiny_model_dir,
            tmp_path / "out",
            via="olive-workflow",
            options={"olive_config": str(DATA / "invalid_gptq.json")},
        )
    assert list(clean_cwd.iterdir()) == []


def test_olive_workflow_is_planned_only_when_named(tiny_model_dir, tmp_path):
    plan = app.convert(tiny_model_dir, tmp_path / "out", precision="int4", plan_only=True)
    assert [step.tool for step in plan.steps] == ["ortgenai-builder"]
    with pytest.raises(SlmkError, match="runs an Olive workflow file"):
        app.convert(tiny_model_dir, tmp_path / "out", via="olive-workflow")


# ------------------------------------------------------------------ slmk olive-config
@pytest.mark.slow
def test_olive_config_file_runs_with_the_olive_cli(run_slmk, tiny_model_dir, tmp_path):
    config_file = tmp_path / "olive_int4.json"
    written = run_slmk(
        "olive-config",
        str(tiny_model_dir),
        "-p",
        "int4",
        "-o",
        str(config_file),
        "--olive-output",
        str(tmp_path / "olive-out"),
    )
    assert written.returncode == 0, written.stderr
    assert "olive run --config" in written.stderr and "slmk convert" in written.stderr
    config = json.loads(config_file.read_text())
    assert [p["type"] for p in config["passes"].values()] == ["Rtn"]
    env = {**os.environ, "CI": "1", "OLIVE_DISABLE_TELEMETRY": "1"}
    ran = subprocess.run(
        [sys.executable, "-m", "olive", "run", "--config", str(config_file)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    quantized = json.loads((tmp_path / "olive-out" / "model" / "config.json").read_text())["quantization_config"]
    assert quantized["bits"] == 4 and quantized["group_size"] == 32
    assert not (tmp_path / ".olive-cache").exists()


def test_olive_config_gptq_names_the_calibration_script(run_slmk, tiny_model_dir, tmp_path):
    data = tiny_model_dir.parent / "data" / "train.jsonl"
    written = run_slmk("olive-config", str(tiny_model_dir), "--algorithm", "gptq", "--calibration", str(data))
    assert written.returncode == 0, written.stderr
    config = json.loads(written.stdout)
    (data_config,) = config["data_configs"]
    assert Path(data_config["user_script"]).is_file()
    assert data_config["load_dataset_config"]["params"]["data_files"] == str(data.resolve())
    assert config["passes"]["gptq"]["data_config"] == data_config["name"]


# ------------------------------------------------------------------ calibration data and doctor
def test_calibration_records(tmp_path):
    from slmk_olive.olive_data import CalibrationError, read_records

    chat = tmp_path / "chat.jsonl"
    chat.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n\n{"text": "plain"}\n')
    assert read_records(chat) == [{"messages": [{"role": "user", "content": "hi"}]}, {"text": "plain"}]
    text = tmp_path / "notes.txt"
    text.write_text("some text\n")
    assert read_records(text) == [{"text": "some text\n"}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\n')
    with pytest.raises(CalibrationError, match="record 1"):
        read_records(bad)
    with pytest.raises(CalibrationError, match="unsupported"):
        read_records(tmp_path / "data.csv")


def test_doctor_probe_reads_metadata_only():
    script = (
        "import sys, slmk_olive\n"
        "from slmk_olive.probe import check\n"
        "results = {r.name: r for r in check()}\n"
        "assert 'olive' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)\n"
        "print({name: r.status for name, r in results.items()})\n"
        "trap = results.get('olive-model-builder')\n"
        "print(trap.fix if trap else '')\n"
    )
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    statuses = ran.stdout.splitlines()[0]
    assert "'olive-ai': 'ok'" in statuses and "'olive-telemetry': 'ok'" in statuses
    from slmk_olive.versions import GENAI_DISTRIBUTIONS, installed, model_builder_pass_broken

    if model_builder_pass_broken(installed("olive-ai"), installed(*GENAI_DISTRIBUTIONS)):
        assert "'olive-model-builder': 'warn'" in statuses
        assert "slmk convert MODEL -p int4 --via olive" in ran.stdout


def test_version_trap_rule():
    from slmk_olive.versions import model_builder_pass_broken

    assert model_builder_pass_broken("0.13.0", "0.18.0")
    assert model_builder_pass_broken("0.13.0", "0.16.0rc1")
    assert not model_builder_pass_broken("0.13.0", "0.15.2")
    assert not model_builder_pass_broken("0.14.0", "0.18.0")
    assert not model_builder_pass_broken(None, "0.18.0")
