"""slmk deploy: real builds of the tiny model, real measurements, a real Foundry Local install
into a temporary cache; the quality gate decides the precision."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from slmk_measure.compare import CompareRequest, run_compare

from slmk import app
from slmk.plugins import get_registry

SHORT = ["--leak-runs", "10", "--max-slowdown", "4"]  # timing on a loaded CI machine is noisy


@pytest.fixture(scope="module")
def table(tiny_model_dir, tiny_build, tiny_eval):
    """The measured precisions of the tiny model, as deploy's gate sees them."""
    from slmk_measure.evalset import load_eval

    for precision in ("fp32", "int8", "int4"):
        tiny_build(precision)  # the shared step cache makes deploy's builds copies of links
    data = tiny_model_dir.parent / "data"
    request = CompareRequest(
        tiny_model_dir,
        ["fp32", "int8", "int4"],
        items=load_eval(data / "eval.jsonl"),
        heldout=(data / "heldout.txt").read_text(),
    )
    report = run_compare(request, app.resolve_ep(get_registry(), "cpu"), lambda path: app.open_session(path))
    return {row["precision"]: row for row in report["precisions"]}


def separating_gate(rows) -> str:
    """A gate term int4 misses and int8 meets, from what was really measured."""
    int4, int8 = rows["int4"], rows["int8"]
    if int4["agreement"] < int8["agreement"]:
        return f"agreement>={(int4['agreement'] + int8['agreement']) / 2:.4f}"
    if int4["ppl"] > int8["ppl"]:
        return f"ppl<={(int4['ppl'] + int8['ppl']) / 2:.6g}"
    if int4["accuracy"] < int8["accuracy"]:
        return f"accuracy>={(int4['accuracy'] + int8['accuracy']) / 2:.4f}"
    pytest.fail(f"no gate term separates int4 from int8 on the tiny model: {rows}")


def _installed(run_slmk, cache) -> list[dict]:
    result = run_slmk("list", "--cache-dir", str(cache), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.slow
def test_a_gate_int4_misses_installs_int8(tiny_model_dir, table, run_slmk, tmp_path):
    gate = separating_gate(table)
    cache = tmp_path / "foundry"
    result = run_slmk(
        "deploy",
        str(tiny_model_dir),
        "--name",
        "tiny-chat",
        "--quality-gate",
        gate,
        "--cache-dir",
        str(cache),
        *SHORT,
        "--json",
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["ok"] and data["chosen"] == "int8", (gate, data["tried"])
    assert data["reference"] == "source"  # what the user trained, not slmk's fp32 build
    assert data["verification"]["status"] == "measured"  # the int8 build, checked against the source
    assert [(t["precision"], t["ok"]) for t in data["tried"]] == [("int4", False), ("int8", True)]
    assert any(r.startswith("FAIL") for r in data["tried"][0]["reasons"])
    assert data["validation"]["ok"] and data["first_answer"]["correct"] is True
    installed = _installed(run_slmk, cache)
    assert [(m["name"], m["version"], m["precision"]) for m in installed] == [("tiny-chat", "1", "int8")]
    assert data["installed"]["ref"] == "tiny-chat:1"


@pytest.mark.slow
def test_the_gate_judges_builds_against_the_source_model(tiny_model_dir, table, run_slmk, tmp_path):
    """agreement>=0.99: each build's greedy answers against transformers' on the source folder."""
    result = run_slmk(
        "deploy",
        str(tiny_model_dir),
        "--name",
        "tiny-chat",
        "--quality-gate",
        "agreement>=0.99",
        "--cache-dir",
        str(tmp_path / "foundry"),
        *SHORT,
        "--json",
    )
    data = json.loads(result.stdout)
    assert data["reference"] == "source" and data["reference_note"] is None
    assert data["source"]["precision"] == "source" and data["source"]["agreement"] == 1.0
    for tried in data["tried"]:  # the same figures compare measured against the source
        assert tried["reference"] is False
        assert tried["agreement"] == table[tried["precision"]]["agreement"]
        assert tried["ok"] == (tried["agreement"] >= 0.99), tried
    assert result.returncode == (0 if data["tried"][-1]["ok"] else 1), result.stderr


@pytest.mark.slow
def test_the_text_output_explains_the_choice(tiny_model_dir, table, run_slmk, tmp_path):
    gate = separating_gate(table)
    result = run_slmk(
        "deploy",
        str(tiny_model_dir),
        "--name",
        "tiny-chat",
        "--quality-gate",
        gate,
        "--cache-dir",
        str(tmp_path / "foundry"),
        *SHORT,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("quality gate ")
    assert lines[2].startswith("int4") and "FAIL" in lines[2]
    assert lines[3].startswith("int8") and " pass " in lines[3]
    assert any(line.startswith("installed tiny-chat:1 (int8, cpu") for line in lines)
    # one progress display on stderr: numbered steps, the builds indented under them
    assert "[1/" in result.stderr and "doctor: required checks" in result.stderr
    assert re.search(r"\n    \[1/\d\] convert", result.stderr)  # 2 steps, +1 or 2 when the source check runs


def test_an_impossible_gate_installs_nothing(tiny_model_dir, table, run_slmk, tmp_path):
    cache = tmp_path / "foundry"
    result = run_slmk(
        "deploy",
        str(tiny_model_dir),
        "--name",
        "tiny-chat",
        "--quality-gate",
        "ppl<=1.0",
        "--cache-dir",
        str(cache),
        *SHORT,
        "--quiet",
    )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(
        "error: no precision passes the quality gate ppl<=1, nothing was installed: int4: ppl "
    )
    assert "int8: ppl" in result.stderr and "fp32: ppl" in result.stderr
    assert _installed(run_slmk, cache) == []


@pytest.mark.slow
def test_without_a_gate_deploys_int4_from_slmk_toml(tiny_model_dir, tiny_build, run_slmk, tmp_path):
    tiny_build("int4")
    assert run_slmk("init", str(tiny_model_dir), "--name", "tiny").returncode == 0
    cache = tmp_path / "foundry"
    result = run_slmk("deploy", "--cache-dir", str(cache), *SHORT, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["chosen"] == "int4" and data["gate"] is None and data["tried"][0]["reasons"] == ["no quality gate"]
    assert data["template"]["family"] and data["template"]["source"]
    assert [(m["name"], m["precision"]) for m in _installed(run_slmk, cache)] == [("tiny", "int4")]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (
            ["--quality-gate", "accuracy>=1.01"],
            "quality-gate term 'accuracy>=1.01': accuracy is a fraction between 0 and 1",
        ),
        (["--quality-gate", "ppl<=+5%,latency<=3"], "unknown metric 'latency'"),
        (["--quality-gate", "accuracy>=0.9", "--precision", "int8"], "--precision and --quality-gate"),
        (["--ep", "cuda"], "this machine is not ready to deploy: ep:cuda"),
    ],
)
def test_bad_requests_fail_before_any_work(tiny_model_dir, run_slmk, tmp_path, args, needle):
    cache = tmp_path / "foundry"
    result = run_slmk("deploy", str(tiny_model_dir), "--name", "x", "--cache-dir", str(cache), "--quiet", *args)
    assert result.returncode in (1, 2) and result.stderr.count("\n") == 1 and needle in result.stderr, result.stderr
    assert not cache.exists() or _installed(run_slmk, cache) == []


def test_an_accuracy_gate_needs_an_eval_file(tiny_model_dir, run_slmk, tmp_path):
    model = tmp_path / "lonely" / "model"
    shutil.copytree(tiny_model_dir, model)  # no ../data beside it
    result = run_slmk(
        "deploy", str(model), "--name", "x", "--quality-gate", "accuracy>=0.9", "--cache-dir", str(tmp_path / "foundry")
    )
    assert result.returncode == 2 and "no eval file" in result.stderr and "--eval" in result.stderr
