"""`-O prune_lm_head=true`: logits of the last position only, for faster prompts and less memory.

The builder's graph otherwise computes the output layer at every prompt position (for a
151,936-word vocabulary, 24% of a 512-token prefill and 297 MiB of logits). Generation
only needs the last row; scoring a text needs them all, so slmk's runtime scores such a
build token by token; Foundry Local misreads it, so the installer refuses it.
"""

from __future__ import annotations

import json
import math

import pytest
from conftest import TINY_DATA
from slmk_ortgenai import runtime
from slmk_system.providers import CPU

from slmk import app
from slmk.api import last_position_logits

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pruned_build(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("pruned") / "int4-pruned"
    app.convert(tiny_model_dir, out, precision="int4", extra_options={"prune_lm_head": "true"})
    return out


def test_the_build_is_known_by_its_logits_output(pruned_build, tiny_build):
    assert last_position_logits(pruned_build) is True
    assert last_position_logits(tiny_build("int4")) is False


def test_answers_and_perplexity_are_those_of_the_full_build(pruned_build, tiny_build, tiny_eval):
    heldout = (TINY_DATA / "heldout.txt").read_text(encoding="utf-8")
    with (
        runtime.OrtGenAISession(pruned_build, CPU) as pruned,
        runtime.OrtGenAISession(tiny_build("int4"), CPU) as full,
    ):
        assert (pruned.score_chunk, full.score_chunk) == (1, runtime.SCORE_CHUNK)
        for item in tiny_eval[:10]:
            answers = ["".join(s.generate(item["messages"], do_sample=False)) for s in (pruned, full)]
            assert answers[0] == answers[1] and answers[0]
        text = heldout[:2000]
        (nll_pruned, n_pruned), (nll_full, n_full) = pruned.score(text), full.score(text)
    assert n_pruned == n_full > 100
    assert math.isclose(nll_pruned, nll_full, rel_tol=1e-4), (nll_pruned, nll_full)


def test_foundry_local_install_is_refused_in_one_line(pruned_build, run_slmk, tmp_path):
    cache = tmp_path / "fc"
    result = run_slmk("install", str(pruned_build), "--name", "pruned", env={"SLMK_FOUNDRY_CACHE": str(cache)})
    assert result.returncode != 0
    assert "computes the logits of the last position only (prune_lm_head)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not cache.exists() or not any(cache.rglob("genai_config.json"))


def test_the_check_reads_no_graph_outside_the_build_and_no_huge_one(pruned_build, tmp_path, monkeypatch):
    import shutil

    from slmk import genai_format

    build = tmp_path / "build"
    shutil.copytree(pruned_build, build)
    assert last_position_logits(build) is True
    config = json.loads((build / "genai_config.json").read_text())
    outside = tmp_path / "outside.onnx"
    shutil.copy(build / "model.onnx", outside)
    config["model"]["decoder"]["filename"] = "../outside.onnx"
    (build / "genai_config.json").write_text(json.dumps(config))
    assert last_position_logits(build) is False  # a name that leaves the build is not followed
    config["model"]["decoder"]["filename"] = "model.onnx"
    (build / "genai_config.json").write_text(json.dumps(config))
    monkeypatch.setattr(genai_format, "GRAPH_READ_LIMIT", 1000)
    assert last_position_logits(build) is False  # a graph with its weights inside is not parsed
