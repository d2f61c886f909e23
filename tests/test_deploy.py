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


@pytest.fixture(scope="module")
def candidates(tiny_model_dir, tmp_path_factory):
    """Every build deploy's gate search makes, measured, smallest first: a gate nothing passes measures them all."""
    import os
    import subprocess
    import sys

    from _signals import default_signals

    cache = tmp_path_factory.mktemp("all-candidates") / "foundry"
    result = subprocess.run(
        [sys.executable, "-m", "slmk", "deploy", str(tiny_model_dir), "--name", "x", "--cache-dir", str(cache)]
        + ["--quality-gate", "ppl<=1,accuracy>=0,agreement>=0", *SHORT, "--json"],
        cwd=cache.parent,
        env=dict(os.environ),
        preexec_fn=default_signals,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 1, result.stderr
    data = json.loads(result.stdout)
    rows = data["tried"]
    assert [r["build"] for r in rows] == [c["build"] for c in data["candidates"]]  # each measured, in size order
    sizes = [c["model_bytes"] for c in data["candidates"]]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes), data["candidates"]
    return rows


def separating_gate(rows) -> str:
    """A gate term the smallest build misses and a larger one meets, from what was really measured."""
    first, rest = rows[0], rows[1:]
    for metric in ("agreement", "accuracy"):
        best = max(r[metric] for r in rest)
        if first[metric] < best:
            return f"{metric}>={(first[metric] + best) / 2:.4f}"
    best = min(r["ppl"] for r in rest)
    if first["ppl"] > best:
        return f"ppl<={(first['ppl'] + best) / 2:.6g}"
    pytest.fail(f"no gate term separates the smallest build from a larger one on the tiny model: {rows}")


def smallest_passing(rows, gate: str) -> dict:
    from slmk_measure.gate import parse_gate

    term = parse_gate(gate).terms[0]
    return next(r for r in rows if term.check(r[term.metric])[0])


def _installed(run_slmk, cache) -> list[dict]:
    result = run_slmk("list", "--cache-dir", str(cache), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.slow
def test_the_gate_installs_the_smallest_build_that_passes(tiny_model_dir, candidates, run_slmk, tmp_path):
    """Not the smallest precision: the smallest file among every candidate (block sizes, embedding quantized)."""
    builds = {r["build"] for r in candidates}
    # int4 quantizes the tiny model's own embedding table by default: the gate also tries it kept float
    assert builds == {
        "int4",
        "int4 b128",
        "int4 b64 lm_head int8",
        "int4 float emb",
        "int4 b128 float emb",
        "int8",
        "int8 b32",
        "fp32",
    }
    gate = separating_gate(candidates)
    expected = smallest_passing(candidates, gate)
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
    assert data["ok"] and data["chosen_build"] == expected["build"], (gate, data["tried"])
    assert data["chosen"] == expected["precision"]
    # every build smaller than the chosen one was measured and failed; none larger was measured
    smaller = [r["build"] for r in candidates[: candidates.index(expected)]]
    assert [(t["build"], t["ok"]) for t in data["tried"]] == [(b, False) for b in smaller] + [(expected["build"], True)]
    assert any(r.startswith("FAIL") for r in data["tried"][0]["reasons"])
    assert data["reference"] == "source"  # what the user trained, not slmk's fp32 build
    assert data["verification"]["status"] in ("measured", "verified")  # the chosen build, checked against the source
    assert data["validation"]["ok"] and data["first_answer"]["correct"] is True
    installed = _installed(run_slmk, cache)
    assert [(m["name"], m["version"], m["precision"]) for m in installed] == [("tiny-chat", "1", expected["precision"])]
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
        if tried["build"] == tried["precision"]:  # a precision's default build: the one compare measured
            assert tried["agreement"] == table[tried["precision"]]["agreement"]
        assert tried["ok"] == (tried["agreement"] >= 0.99), tried
    assert result.returncode == (0 if data["tried"][-1]["ok"] else 1), result.stderr


@pytest.mark.slow
def test_the_text_output_explains_the_choice(tiny_model_dir, candidates, run_slmk, tmp_path):
    gate = separating_gate(candidates)
    expected = smallest_passing(candidates, gate)
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
    assert lines[1].startswith("build ")
    assert lines[2].startswith(candidates[0]["build"] + " ") and "FAIL" in lines[2]
    chosen = next(i for i, line in enumerate(lines) if " pass " in line)
    assert lines[chosen].startswith(expected["build"] + " ") and f"chose {expected['build']}:" in result.stdout
    assert any(line.startswith(f"installed tiny-chat:1 ({expected['precision']}, cpu") for line in lines)
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
        "error: no build passes the quality gate ppl<=1, nothing was installed: int4 b128: ppl "
    )
    for build in ("int4", "int4 float emb", "int8", "fp32"):
        assert f"; {build}: ppl" in result.stderr, result.stderr
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
