"""bench, validate and compare: real measurements of the tiny model's real builds.

The settings are short (few lengths, one repeat, a short leak run with a looser
threshold) so the file runs in well under a minute on 2 cores.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from slmk_measure.bench import geometric_lengths, parse_lengths
from slmk_measure.evalset import load_eval, schema_problem
from slmk_measure.gate import parse_gate
from slmk_measure.stats import percentile, slope, summary

from slmk.errors import UsageError

REPO = Path(__file__).resolve().parent.parent
WRONG_FAMILY_TEMPLATE = REPO / "plugins" / "slmk_families" / "chat_templates" / "phi-3.5-mini.jinja"
SHORT_VALIDATE = ["--leak-runs", "100", "--leak-threshold-kb", "64", "--sessions", "5", "--max-slowdown", "4"]


def _json(result):
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)


# ------------------------------------------------------------------ pure parts
def test_statistics():
    assert percentile([1, 2, 3, 4, 5], 50) == 3
    assert percentile([1, 2, 3, 4, 5], 90) == pytest.approx(4.6)
    assert summary([3.0, 1.0, 2.0]) == {"median": 2.0, "p90": 2.8, "n": 3}
    assert slope([0, 2, 4, 6]) == pytest.approx(2.0)
    assert slope([5, 5, 5]) == 0.0


def test_lengths():
    assert geometric_lengths(16, 480, 5) == [16, 37, 88, 205, 480]
    assert geometric_lengths(16, 10, 5) == [16]
    assert parse_lengths("16, 64,256") == [16, 64, 256]
    with pytest.raises(UsageError, match="--lengths"):
        parse_lengths("16,abc")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ppl<=+5%", [("ppl", "<=", 5.0, True)]),
        ("ppl<=12.5, accuracy>=0.9", [("ppl", "<=", 12.5, False), ("accuracy", ">=", 0.9, False)]),
        ("agreement>=0.8,decode_tps>=50", [("agreement", ">=", 0.8, False), ("decode_tps", ">=", 50.0, False)]),
        ("accuracy>=-5%", [("accuracy", ">=", -5.0, True)]),
    ],
)
def test_gate_grammar(text, expected):
    gate = parse_gate(text)
    assert [(t.metric, t.op, t.value, t.relative) for t in gate.terms] == expected


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("accuracy>=1.01", "accuracy>=1.01"),
        ("ppl>=3", "lower-is-better"),
        ("speed>=3", "unknown metric 'speed'"),
        ("ppl<=5%", "carries a sign"),
        ("ppl<=+5", "needs %"),
        ("ppl<=", "cannot read"),
        ("", "empty"),
        ("ppl<=+5%,,accuracy>=0.9", "empty term"),
        ("decode_tps>=0", "positive"),
    ],
)
def test_gate_errors_name_the_term_and_the_grammar(text, needle):
    with pytest.raises(UsageError) as caught:
        parse_gate(text)
    assert needle in caught.value.message
    assert "ppl<=+5%" in caught.value.hint  # the grammar


def test_gate_checks_against_the_reference():
    class Row:
        def __init__(self, **values):
            self.values = values

        def metric(self, name):
            return self.values.get(name)

    gate = parse_gate("ppl<=+5%,accuracy>=0.9")
    reference = Row(ppl=10.0, accuracy=1.0)
    assert gate.check(Row(ppl=10.4, accuracy=0.95), reference)[0]
    ok, reasons = gate.check(Row(ppl=10.6, accuracy=0.95), reference)
    assert not ok and reasons[0].startswith("FAIL: ppl 10.6 > 10.5")
    assert not gate.check(Row(ppl=None, accuracy=1.0), reference)[0]  # unmeasured never passes


def test_json_schema_subset():
    schema = {
        "type": "object",
        "required": ["name", "moons"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "minLength": 2},
            "moons": {"type": "integer", "minimum": 0},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}},
        },
    }
    from slmk_measure.evalset import _subset_problem

    # the built-in subset, used where the jsonschema package is not installed
    def subset(value):
        return _subset_problem(value, schema, "$")

    assert subset({"name": "Veltra", "moons": 4, "tags": ["a"]}) is None
    assert "missing required property 'moons'" in subset({"name": "Veltra"})
    assert "expected integer" in subset({"name": "Veltra", "moons": "four"})
    assert "unexpected property" in subset({"name": "Veltra", "moons": 4, "x": 1})
    assert "not one of" in subset({"name": "Veltra", "moons": 4, "tags": ["c"]})
    # schema_problem (jsonschema where installed) agrees on what passes and what fails
    for value in ({"name": "Veltra", "moons": 4}, {"name": "Veltra"}, {"name": "V", "moons": 4}, {"moons": -1}):
        assert (schema_problem(value, schema) is None) == (subset(value) is None), value


def test_eval_file_errors_say_where(tmp_path):
    bad = tmp_path / "eval.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}], "expected": "x"}\n{"messages": []}\n')
    with pytest.raises(UsageError, match=r"eval.jsonl:2: messages"):
        load_eval(bad)
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    with pytest.raises(UsageError, match="says nothing about the answer"):
        load_eval(bad)
    with pytest.raises(UsageError, match="not found"):
        load_eval(tmp_path / "missing.jsonl")


# ------------------------------------------------------------------ bench
def test_bench_json(tiny_build, run_slmk):
    build = tiny_build("int4")
    result = run_slmk("bench", str(build), "--lengths", "16,64,200", "--repeats", "2", "--new-tokens", "8", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["context_length"] > 200 and report["fixed_answer_length"] is True
    assert [row["target_prompt_tokens"] for row in report["lengths"]] == [16, 64, 200]
    for row in report["lengths"]:
        # the filler prompt comes as close to the target as the tokenizer allows, never over
        assert row["target_prompt_tokens"] - 4 <= row["prompt_tokens"] <= row["target_prompt_tokens"]
        assert row["generated_tokens"]["median"] == 8  # min_length held off the end token
        for key in ("time_to_first_token_s", "prompt_tokens_per_s", "decode_tokens_per_s"):
            assert row[key]["median"] > 0 and row[key]["p90"] >= 0 and row[key]["n"] == 2
        assert row["peak_rss_bytes"] > 10 * 2**20 and row["cpu_percent"]["median"] > 0
    assert report["peak_rss_bytes"] >= max(row["peak_rss_bytes"] for row in report["lengths"])
    assert report["model_rss_bytes"] > 0


def test_bench_rejects_lengths_beyond_the_context(tiny_build, run_slmk):
    result = run_slmk("bench", str(tiny_build("int4")), "--lengths", "100000", "--json")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "exceeds the context" in result.stderr


def test_plot_without_matplotlib_is_one_line_with_the_fix(tiny_build, run_slmk, tmp_path):
    # a matplotlib that fails to import, first on the path: the same as not installed
    shadow = tmp_path / "no-matplotlib" / "matplotlib"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    result = run_slmk(
        "bench", str(tiny_build("int4")), "--plot", str(tmp_path / "bench.png"), env={"PYTHONPATH": str(shadow.parent)}
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: --plot needs matplotlib, which is not installed (pip install matplotlib (or drop --plot))"
    )
    assert not (tmp_path / "bench.png").exists()


def test_plot_draws_a_png(tiny_build, run_slmk, tmp_path):
    pytest.importorskip("matplotlib")
    result = run_slmk(
        "bench",
        str(tiny_build("int4")),
        "--lengths",
        "16,64",
        "--repeats",
        "1",
        "--new-tokens",
        "4",
        "--plot",
        str(tmp_path / "bench.png"),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["plot"] == str(tmp_path / "bench.png")
    assert (tmp_path / "bench.png").read_bytes().startswith(b"\x89PNG")


# ------------------------------------------------------------------ validate
@pytest.mark.slow
def test_validate_passes_the_good_build(tiny_build, run_slmk, tmp_path):
    report_file = tmp_path / "report.md"
    result = run_slmk("validate", str(tiny_build("int4")), *SHORT_VALIDATE, "--json", "--report", str(report_file))
    report = _json(result)
    checks = {c["id"]: c for c in report["checks"]}
    assert result.returncode == 0 and report["ok"], [c for c in report["checks"] if c["status"] == "fail"]
    assert report["eval_file"].endswith("examples/tiny-chat/data/eval.jsonl")
    assert set(checks) == {
        "domain",
        "format",
        "edge:empty",
        "edge:whitespace",
        "edge:non-ascii",
        "edge:overlong",
        "edge:template-tokens",
        "edge:control-token-text",
        "prompt-tokens",
        "performance",
        "memory-leak",
        "sessions",
        "source",
    }
    tokens = checks["prompt-tokens"]
    assert tokens["status"] == "pass" and tokens["data"]["ids_compared"], tokens
    assert f"prompt tokens equal to transformers: {tokens['data']['conversations']}/" in tokens["evidence"]
    assert checks["domain"]["status"] == "pass" and checks["domain"]["data"]["accuracy"] >= 0.9
    # what the user trained, run by transformers, is the reference: its accuracy beside the build's
    source = checks["source"]
    assert source["status"] == "pass" and source["data"]["verification"]["status"] == "measured"
    assert source["data"]["source_accuracy"] >= 0.9
    assert source["data"]["build_accuracy"] == checks["domain"]["data"]["accuracy"]
    assert "against the source's" in source["evidence"] and "(transformers)" in source["evidence"]
    assert checks["format"]["status"] == "skip"  # the tiny eval set sets no formats
    assert checks["edge:overlong"]["data"]["outcome"] in ("refused", "answered")
    assert checks["edge:non-ascii"]["data"]["tokenizer_round_trip"] is True
    assert checks["edge:template-tokens"]["status"] == "pass"
    # onnxruntime-genai's tokenizer reads <|im_end|> typed by a user as the control token: reported, not hidden
    control = checks["edge:control-token-text"]
    assert control["status"] in ("pass", "warn")
    assert (control["status"] == "warn") == bool(control["data"]["parsed_as_control"])
    leak = checks["memory-leak"]
    assert leak["status"] == "pass" and leak["data"]["runs"] >= 100 and leak["data"]["slope_kb_per_run"] <= 64
    assert checks["sessions"]["data"]["cycles"] == 5
    assert checks["performance"]["data"]["worst_slowdown"] > 0
    text = report_file.read_text()
    assert text.startswith("# Validation of") and "**PASSED**" in text and "| Domain answers |" in text


def test_the_prompt_token_check_says_when_transformers_is_missing(tiny_build, monkeypatch):
    import sys

    from slmk_measure.validate import TOKEN_CONVERSATIONS, transformers_prompt_tokens

    expected = transformers_prompt_tokens(tiny_build("int4"), TOKEN_CONVERSATIONS)
    assert len(expected) == len(TOKEN_CONVERSATIONS) and all(expected)
    monkeypatch.setitem(sys.modules, "transformers", None)  # what an environment without it gives: ImportError
    said = transformers_prompt_tokens(tiny_build("int4"), TOKEN_CONVERSATIONS)
    assert isinstance(said, str) and "transformers is not installed" in said


def test_validate_catches_a_wrong_chat_template(tiny_build, run_slmk, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_build("int4"), broken)
    (broken / "chat_template.jinja").write_text(WRONG_FAMILY_TEMPLATE.read_text())  # a Phi template on a ChatML model
    result = run_slmk("validate", str(broken), "--leak-runs", "5", "--sessions", "2", "--json")
    report = _json(result)
    assert result.returncode == 1 and not report["ok"]
    domain = next(c for c in report["checks"] if c["id"] == "domain")
    assert domain["status"] == "fail" and domain["data"]["accuracy"] < 0.9, domain["evidence"]
    assert domain["data"]["wrong"][0]["answer"]  # evidence: what it said instead


def test_validate_fails_an_answer_and_a_format_it_cannot_give(tiny_build, run_slmk, tmp_path):
    eval_file = tmp_path / "eval.jsonl"
    question = [{"role": "user", "content": "How many moons does Veltra have?"}]
    eval_file.write_text(
        "\n".join(
            json.dumps(item)
            for item in [
                {"messages": question, "expected": "four moons"},
                {"messages": question, "regex": r"\bfour\b", "format_regex": r"[A-Z].*\."},
                {"messages": [{"role": "user", "content": "What is the capital of Veltra?"}], "exact": "Paris."},
                {"messages": question, "json_schema": {"type": "object", "required": ["moons"]}},
            ]
        )
        + "\n"
    )
    result = run_slmk(
        "validate",
        str(tiny_build("int4")),
        "--eval",
        str(eval_file),
        "--min-accuracy",
        "1.0",
        "--leak-runs",
        "5",
        "--sessions",
        "2",
    )
    assert result.returncode == 1
    lines = {line.split(":")[0]: line for line in result.stdout.splitlines()}
    assert lines["FAIL  Domain answers"].startswith("FAIL  Domain answers: 2/3 correct")
    assert "wanted exact 'Paris.'" in lines["FAIL  Domain answers"]
    assert "1/2 answers in the required format" in lines["FAIL  Output format"]
    assert "not JSON" in lines["FAIL  Output format"]
    assert result.stdout.splitlines()[-1].startswith("validate ") and "FAILED" in result.stdout.splitlines()[-1]


def test_validate_without_an_eval_file_skips_the_domain_check(tiny_build, run_slmk, tmp_path):
    build = tmp_path / "elsewhere"
    shutil.copytree(tiny_build("int4"), build)
    info = json.loads((build / "slmk_build.json").read_text())
    info["source"] = str(tmp_path / "gone" / "model")  # no ../data/eval.jsonl beside it
    (build / "slmk_build.json").write_text(json.dumps(info))
    report = _json(run_slmk("validate", str(build), "--leak-runs", "5", "--sessions", "2", "--json"))
    domain = next(c for c in report["checks"] if c["id"] == "domain")
    assert domain["status"] == "skip" and "--eval" in domain["evidence"]
    # the source folder is gone: said in one line, the build is checked alone
    source = next(c for c in report["checks"] if c["id"] == "source")
    assert source["status"] == "pass" and "the source model is not run: its source folder" in source["evidence"]
    refused = run_slmk("validate", str(build), "--reference", "source", "--leak-runs", "5", "--sessions", "2")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith("error: --reference source: the source model cannot run here: its source folder")


@pytest.mark.slow
def test_validate_and_bench_an_installed_model_through_foundry_local(tiny_build, run_slmk, tmp_path):
    from slmk import app

    cache = tmp_path / "foundry"
    app.install(tiny_build("int4"), "tiny-chat", cache_dir=cache)
    report = _json(
        run_slmk(
            "validate",
            "tiny-chat",
            "--cache-dir",
            str(cache),
            "--runtime",
            "foundry",
            "--leak-runs",
            "5",
            "--sessions",
            "2",
            "--json",
        )
    )
    checks = {c["id"]: c for c in report["checks"]}
    assert report["ok"] and report["runtime"] == "foundry", [c for c in report["checks"] if c["status"] == "fail"]
    assert checks["domain"]["status"] == "pass"
    # five generations cannot tell warm-up from a leak: the check says so instead of guessing
    assert checks["memory-leak"]["status"] == "skip" and "not enough runs to judge" in checks["memory-leak"]["evidence"]
    # the SDK exposes no tokenizer and no min_length: said, not guessed
    assert checks["edge:control-token-text"]["status"] == "skip"
    assert checks["performance"]["status"] == "skip" and "min_length" in checks["performance"]["evidence"]
    # Foundry tokenizes itself: its prompt token counts are measured against transformers'
    tokens = checks["prompt-tokens"]
    assert tokens["status"] == "pass" and not tokens["data"]["ids_compared"], tokens
    count = tokens["data"]["conversations"]
    assert (
        "prompt token counts" in tokens["evidence"] and f"equal to transformers: {count}/{count}" in tokens["evidence"]
    )
    result = run_slmk(
        "bench",
        "tiny-chat",
        "--cache-dir",
        str(cache),
        "--runtime",
        "foundry",
        "--lengths",
        "16,100",
        "--repeats",
        "1",
        "--new-tokens",
        "8",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    bench = json.loads(result.stdout)
    assert bench["fixed_answer_length"] is False and bench["token_counting"] == "runtime usage report"
    assert all(16 - 4 <= row["prompt_tokens"] <= 16 for row in bench["lengths"][:1])
    assert all(row["decode_tokens_per_s"]["median"] >= 0 and row["peak_rss_bytes"] > 0 for row in bench["lengths"])


# ------------------------------------------------------------------ compare
@pytest.mark.slow
def test_compare_json(tiny_model_dir, tiny_build, run_slmk):
    for precision in ("fp32", "int8", "int4"):
        tiny_build(precision)  # warm the shared step cache
    result = run_slmk("compare", str(tiny_model_dir), "--precisions", "fp32,int8,int4", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    rows = {row["precision"]: row for row in report["precisions"]}
    # the source model (transformers) is the reference row; the fp32 build is one more row
    assert report["reference"] == "source" and report["reference_note"] is None
    assert list(rows) == ["source", "fp32", "int8", "int4"]
    assert [name for name, row in rows.items() if row["reference"]] == ["source"]
    assert rows["int4"]["size_bytes"] < rows["int8"]["size_bytes"] < rows["fp32"]["size_bytes"]
    assert rows["source"]["size_ratio"] == 1.0 and 0 < rows["int4"]["size_ratio"] < 0.5
    for row in rows.values():
        assert math.isfinite(row["ppl"]) and row["ppl"] > 1 and row["ppl_tokens"] > 100
        assert 0 <= row["accuracy"] <= 1 and row["items"] == 40
        assert 0 <= row["agreement"] <= 1 and row["decode_tps"] > 0 and row["decode_ratio"] > 0
    assert rows["source"]["agreement"] == 1.0 and rows["source"]["ppl_change_pct"] == 0.0
    # the fp32 build is what the user trained: same perplexity, same greedy answers
    assert abs(rows["fp32"]["ppl_change_pct"]) < 0.1 and rows["fp32"]["agreement"] >= 0.95
    assert rows["source"]["accuracy"] >= 0.9  # the tiny model knows its domain
    assert rows["fp32"]["verification"]["status"] == "verified"
    assert rows["int4"]["verification"]["status"] == "measured" and "verification" not in rows["source"]
    recommendation = report["recommendation"]
    assert recommendation["precision"] in rows and recommendation["tolerance"] == "ppl<=+5%,accuracy>=-5%"
    assert set(recommendation["verdicts"]) == {"fp32", "int8", "int4"} and recommendation["verdicts"]["fp32"]["ok"]


@pytest.mark.slow
def test_compare_with_the_fp32_build_as_reference(tiny_model_dir, tiny_build, run_slmk):
    tiny_build("fp32")
    tiny_build("int4")
    result = run_slmk(
        "compare", str(tiny_model_dir), "--precisions", "fp32,int4", "--reference", "fp32", "--json", "--quiet"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["reference"] == "fp32" and [r["precision"] for r in report["precisions"]] == ["fp32", "int4"]
    assert report["precisions"][0]["agreement"] == 1.0 and report["precisions"][0]["reference"] is True


def test_compare_source_reference_of_an_onnx_build_is_refused(tiny_build, run_slmk):
    from slmk_measure.reference import choose_reference

    with pytest.raises(UsageError, match=r"^--reference source: the source model cannot run here: .* already an ONNX"):
        choose_reference("source", tiny_build("int4"))
    reference, note = choose_reference(None, tiny_build("int4"))
    assert reference == "fp32" and note.startswith("reference: the fp32 build, since the source model cannot run")


def test_compare_refuses_a_precision_the_ep_cannot_run(tiny_model_dir, run_slmk):
    result = run_slmk("compare", str(tiny_model_dir), "--precisions", "fp32,fp16")
    assert result.returncode == 2 and "fp16 builds do not run on cpu" in result.stderr


def test_speed_cliff_detection_against_the_linear_trend():
    from slmk_measure.validate import Validator

    linear = {16: [1.00e-4, 1.2e-4], 64: [1.05e-4], 256: [1.25e-4], 480: [1.48e-4]}
    worst, lengths, _, _ = Validator._worst_slowdown(linear)
    assert lengths == [16, 64, 256, 480] and worst == pytest.approx(1.0, abs=0.05)
    cliff = {**linear, 480: [4.5e-4]}  # three times what the attention growth explains
    assert Validator._worst_slowdown(cliff)[0] > 2.9
    assert Validator._worst_slowdown({16: [1e-4], 64: [1e-4]})[0] is None


def test_the_leak_judgement_tells_warm_up_from_a_leak():
    from slmk_measure.validate import LEAK_BLOCK, judge_leak

    kb = 1024
    threshold = 10 * kb
    # warm-up: RSS rises fast at first, then levels off (the shape measured over thousands of runs)
    warm = [int(100e6 + 4000 * kb * (1 - 0.98**i)) for i in range(600)]
    assert judge_leak(warm[:100], threshold, final=False) is None  # still slowing down: keep measuring
    verdict = judge_leak(warm[:200], threshold, final=False)
    assert verdict is None or verdict[0] == "pass"  # never a false alarm while it levels off
    status, _, per_run = judge_leak(warm[:400], threshold, final=False)
    assert status == "pass" and per_run <= 10
    # a leak: the same 20 KB every generation, from the first to the last
    leak = [int(100e6 + 20 * kb * i + (i % 3) * kb) for i in range(200)]
    status, _, per_run = judge_leak(leak, threshold, final=False)
    assert status == "fail" and 19 <= per_run <= 21
    # flat with noise passes at once
    flat = [int(100e6 + (i * 7919 % 13) * kb) for i in range(100)]
    assert judge_leak(flat, threshold, final=False)[0] == "pass"
    # the final look never defers
    assert judge_leak(warm[:100], threshold, final=True)[0] in ("pass", "fail")
    assert LEAK_BLOCK > 0


def test_every_validate_key_of_a_sweep_is_a_validation_limit():
    """A sweep's [validate] table becomes ValidationLimits(**table): each key it accepts must be a limit."""
    from dataclasses import fields

    from slmk_measure.sweep import SWEEP_SETTINGS
    from slmk_measure.validate import ValidationLimits

    table = {s.key.split(".", 1)[1] for s in SWEEP_SETTINGS if s.key.startswith("validate.")}
    assert table == {f.name for f in fields(ValidationLimits)}
