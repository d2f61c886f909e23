"""slmk_ortgenai.tune on the real tiny model: what it writes and how it reports, never how fast."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from slmk_ortgenai import tune as tuning
from slmk_ortgenai.session_options import logical_cores, parse_session_options
from slmk_ortgenai.tune import TuneOptions

from slmk.api import UsageError
from slmk.api.files import is_temp_name
from slmk.api.models import read_genai_config

ROW = re.compile(r"^\| (\d+) \| ([^|]+) \| (\d+\.\d) \| (\d+\.\d) \| (\d+\.\d) \| (\d+\.\d) \| ([^|]+) \| (yes|) \|$")
HEADER = "| # | settings | prefill tok/s | decode tok/s | first token ms | request ms | quality | chosen |"


@pytest.fixture
def build_copy(tiny_build, tmp_path) -> Path:
    """A private copy of the cached tiny int4 build (tune rewrites its genai_config.json)."""
    folder = tmp_path / "builds" / "int4"
    shutil.copytree(tiny_build("int4"), folder)
    return folder


def _rebuild_once(source: Path) -> TuneOptions:
    """One thread count, the rebuild stages, the shortest measurement that still tells candidates apart."""
    return TuneOptions(threads=[1], rebuild_options=True, source=source, rounds=1, prompt_tokens=16, new_tokens=3)


def _without_session_options(config: dict) -> dict:
    config = json.loads(json.dumps(config))
    config["model"]["decoder"].pop("session_options")
    return config


@pytest.mark.slow
def test_build_has_a_thread_count(tiny_build):
    """The builder writes intra_op_num_threads: onnxruntime-genai 0.18 would use one thread without it."""
    options = read_genai_config(tiny_build("int4"))["model"]["decoder"]["session_options"]
    assert options["intra_op_num_threads"] == logical_cores()


@pytest.mark.slow
def test_tune_threads_writes_the_choice_and_a_fixed_table(build_copy):
    before = read_genai_config(build_copy)
    result = tuning.tune(build_copy, TuneOptions(threads=[2, 1], rounds=2, prompt_tokens=24, new_tokens=4))

    # what was tried: one trial per thread count, in increasing order, each measured every round
    assert [t.label for t in result.trials] == ["threads=1", "threads=2"]
    assert all(len(t.request_s) == 2 and min(t.request_s) > 0 for t in result.trials)
    assert sum(t.chosen for t in result.trials) == 1
    chosen = result.chosen
    # the rule: the first candidate within the tie margin of the fastest median request
    fastest = min(t.median_request_s for t in result.trials)
    first_close = next(t for t in result.trials if t.median_request_s <= fastest * (1 + tuning.TIE_MARGIN))
    assert chosen is first_close

    # what was written: the chosen count, and nothing else of genai_config.json changed
    after = read_genai_config(build_copy)
    assert (
        after["model"]["decoder"]["session_options"]["intra_op_num_threads"] == chosen.settings["intra_op_num_threads"]
    )
    assert after["model"]["decoder"]["session_options"]["log_id"] == "onnxruntime-genai"
    assert _without_session_options(after) == _without_session_options(before)
    assert result.written == after["model"]["decoder"]["session_options"]
    assert result.rebuilt == {}
    # no scratch folder is left beside the build
    assert not [p for p in build_copy.parent.iterdir() if is_temp_name(p.name)]

    lines = result.table().splitlines()
    assert lines[0] == (
        f"tune {build_copy.resolve()}: {logical_cores()} logical cores; one request of {result.prompt_tokens} "
        "prompt tokens and 4 new tokens, median of 2 rounds"
    )
    assert 2 <= result.prompt_tokens <= 24
    assert lines[1] == "" and lines[2] == HEADER and lines[3] == "|---|---|---|---|---|---|---|---|"
    rows = [ROW.match(line) for line in lines[4:6]]
    assert all(rows), lines[4:6]
    assert [m.group(2) for m in rows] == ["threads=1", "threads=2"]
    assert [m.group(8) for m in rows] == ["yes" if t.chosen else "" for t in result.trials]
    assert all(m.group(7) == "as built" for m in rows)
    assert lines[6] == ""
    assert lines[7] == (
        f"chosen: threads={chosen.settings['intra_op_num_threads']}; genai_config.json session_options: "
        f"intra_op_num_threads={chosen.settings['intra_op_num_threads']}, log_id=onnxruntime-genai, provider_options=[]"
    )
    assert len(lines) == 8
    json.dumps(result.as_dict())  # the --json form serialises


@pytest.mark.slow
def test_rebuild_keeps_only_candidates_that_pass_the_gate(build_copy, tiny_model_dir, monkeypatch):
    """A rebuilt candidate that fails the quality gate is reported, never timed, never chosen."""
    monkeypatch.setattr(tuning, "REBUILD_STAGES", (("block_size", ({"block_size": 32}, {"block_size": 64})),))
    gated: list[Path] = []

    def gate(folder: Path) -> str | None:
        gated.append(folder)
        return "perplexity up 40%"

    options = TuneOptions(
        threads=[1],
        rebuild_options=True,
        source=tiny_model_dir,
        quality_gate=gate,
        rounds=1,
        prompt_tokens=16,
        new_tokens=3,
    )
    result = tuning.tune(build_copy, options)
    assert len(gated) == 1  # block_size=32 is the build's own setting: not rebuilt
    labels = [t.label for t in result.trials]
    assert labels == ["threads=1", "threads=1", "block_size=64, threads=1"]
    failed = result.trials[-1]
    assert failed.quality == "fail: perplexity up 40%" and failed.request_s == [] and not failed.chosen
    assert result.rebuilt == {}
    assert "| 3 | block_size=64, threads=1 | nan | nan | nan | inf | fail: perplexity up 40% |  |" in result.table()
    assert read_genai_config(build_copy)["model"]["decoder"]["session_options"]["intra_op_num_threads"] == 1
    assert not [p for p in build_copy.parent.iterdir() if is_temp_name(p.name)]


def test_bad_input_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="cannot tune"):
        tuning.tune(tmp_path)
    with pytest.raises(UsageError, match="positive whole number"):
        parse_session_options({"intra_op_num_threads": "0"})
    with pytest.raises(UsageError, match="positive whole number"):
        parse_session_options({"intra_op_num_threads": "two"})
    assert parse_session_options({"intra_op_num_threads": " 3 "}) == {"intra_op_num_threads": 3}


@pytest.mark.slow
def test_bad_thread_counts_are_refused_before_measuring(build_copy):
    before = (build_copy / "genai_config.json").read_text()
    with pytest.raises(UsageError, match="thread counts must be positive"):
        tuning.tune(build_copy, TuneOptions(threads=[0, 1]))
    assert (build_copy / "genai_config.json").read_text() == before


def test_thread_candidates():
    assert tuning.thread_candidates(1) == [1]
    assert tuning.thread_candidates(2) == [1, 2]
    assert tuning.thread_candidates(8) == list(range(1, 9))
    assert tuning.thread_candidates(16) == [1, 2, 4, 8, 15, 16]


@pytest.mark.slow
def test_rebuild_that_passes_leaves_a_consistent_build(build_copy, tiny_model_dir, monkeypatch):
    """Whichever candidate wins, the folder afterwards is that candidate: its files, its record, its threads."""
    monkeypatch.setattr(tuning, "REBUILD_STAGES", (("block_size", ({"block_size": 64},)),))
    weights_before = (build_copy / "model.onnx.data").read_bytes()
    result = tuning.tune(build_copy, _rebuild_once(tiny_model_dir))
    assert [t.label for t in result.trials] == ["threads=1", "threads=1", "block_size=64, threads=1"]
    assert result.trials[-1].quality == "not checked" and len(result.trials[-1].request_s) == 1
    record = json.loads((build_copy / "slmk_build.json").read_text())
    options = record["plan"]["steps"][-1]["options"]
    if result.rebuilt:
        assert result.rebuilt == {"block_size": 64} and result.chosen is result.trials[-1]
        assert options["block_size"] == 64
        assert (build_copy / "model.onnx.data").read_bytes() != weights_before
    else:
        assert result.chosen is result.trials[1]
        assert "block_size" not in options
        assert (build_copy / "model.onnx.data").read_bytes() == weights_before
    assert read_genai_config(build_copy)["model"]["decoder"]["session_options"]["intra_op_num_threads"] == 1
    assert not [p for p in build_copy.parent.iterdir() if is_temp_name(p.name)]


def test_the_tune_command_writes_the_choice_and_rebuilds_behind_the_accuracy_gate(build_copy, run_slmk):
    result = run_slmk("tune", str(build_copy), "--threads", "1,2", "--rounds", "1", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [t["label"] for t in report["trials"]] == ["threads=1", "threads=2"]
    chosen = next(t for t in report["trials"] if t["chosen"])
    assert read_genai_config(build_copy)["model"]["decoder"]["session_options"]["intra_op_num_threads"] == int(
        chosen["label"].split("=")[1]
    )
    bad = run_slmk("tune", str(build_copy), "--threads", "one")
    assert bad.returncode == 2 and "--threads" in bad.stderr
    gated = run_slmk("tune", str(build_copy), "--rebuild", "--eval", str(build_copy / "nope.jsonl"))
    assert gated.returncode == 2 and "eval items" in gated.stderr


@pytest.mark.slow
def test_the_embedding_stage_is_for_tied_models_only(build_copy, tiny_model_dir, monkeypatch):
    """The tiny model is untied: keeping its embedding apart is what it has already; nothing is rebuilt."""
    monkeypatch.setattr(tuning, "REBUILD_STAGES", (tuning.REBUILD_STAGES[-1],))
    result = tuning.tune(build_copy, _rebuild_once(tiny_model_dir))
    assert tuning.REBUILD_STAGES[0][0] == "embedding"
    assert [t.label for t in result.trials] == ["threads=1"]


def test_of_equally_fast_candidates_the_smallest_build_wins():
    """Within TIE_MARGIN of the fastest: the smallest folder, then the one tried first; a failed gate never wins."""
    as_built = tuning.Trial(settings={}, request_s=[1.00], quality="as built", size_bytes=1_300)
    smaller = tuning.Trial(settings={}, build_options={"block_size": 128}, request_s=[1.02], size_bytes=1_200)
    smallest_failed = tuning.Trial(settings={}, request_s=[0.9], quality="fail: accuracy 0.5 < 0.9", size_bytes=800)
    slower = tuning.Trial(settings={}, build_options={"x": 1}, request_s=[1.2], size_bytes=900)
    assert tuning._best([as_built, smaller, smallest_failed, slower]) is smaller
    same_size = tuning.Trial(settings={}, request_s=[0.99], size_bytes=1_300)
    assert tuning._best([as_built, same_size]) is as_built  # a tie of equal size: the one tried first
    assert tuning._best([as_built, slower]) is as_built  # 20% slower is no tie, however small


@pytest.mark.slow
def test_an_untied_int4_build_tries_its_embedding_table_in_float(build_copy, tiny_model_dir, monkeypatch):
    """The tiny model keeps its own embedding table, int4 by default: the stage rebuilds it float, a larger build."""
    stage = next(s for s in tuning.REBUILD_STAGES if s[0] == "float_embedding")
    monkeypatch.setattr(tuning, "REBUILD_STAGES", (stage,))
    result = tuning.tune(build_copy, _rebuild_once(tiny_model_dir))
    labels = [t.label for t in result.trials]
    assert labels == ["threads=1", "threads=1", "op_types_to_quantize=MatMul, threads=1"]
    as_built, kept_float = result.trials[1], result.trials[2]
    assert kept_float.size_bytes > as_built.size_bytes + 200_000  # the 936 x 128 fp32 table (479 kB) instead of int4
