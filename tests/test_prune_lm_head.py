"""prune_lm_head: int4/int8 builds compute the logits of the last prompt position only.

The builder's graph otherwise computes the output layer at every prompt position (for a
151,936-word vocabulary, 24% of a 512-token prefill and 297 MiB of logits). Generation
only needs the last row; scoring a text needs them all, so slmk's runtime asks the model
how many rows a call gives and scores a pruned build token by token. Foundry Local runs
such a build as it runs any other.
"""

from __future__ import annotations

import math

import pytest
from conftest import TINY_DATA
from slmk_ortgenai import runtime
from slmk_system.providers import CPU

from slmk import app

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def full_build(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "int4-full-logits"
    app.convert(tiny_model_dir, out, precision="int4", options={"prune_lm_head": "false"})
    return out


def _logits_rows(build) -> int:
    import onnx

    graph = onnx.load(str(build / "model.onnx"), load_external_data=False).graph
    logits = next(o for o in graph.output if o.name == "logits")
    dim = logits.type.tensor_type.shape.dim[1]
    return dim.dim_value if dim.HasField("dim_value") else -1


def test_quantized_builds_are_pruned_unless_asked_not_to(tiny_build, full_build):
    assert _logits_rows(tiny_build("int4")) == 1
    assert _logits_rows(tiny_build("int8")) == 1
    assert _logits_rows(tiny_build("fp32")) == -1  # the reference keeps every position (a symbolic dim)
    assert _logits_rows(full_build) == -1


def test_answers_and_perplexity_are_those_of_the_full_build(tiny_build, full_build, tiny_eval):
    heldout = (TINY_DATA / "heldout.txt").read_text(encoding="utf-8")
    with (
        runtime.OrtGenAISession(tiny_build("int4"), CPU) as pruned,
        runtime.OrtGenAISession(full_build, CPU) as full,
    ):
        assert (pruned.score_chunk, full.score_chunk) == (1, runtime.SCORE_CHUNK)  # asked of the model
        for item in tiny_eval[:10]:
            answers = ["".join(s.generate(item["messages"], do_sample=False)) for s in (pruned, full)]
            assert answers[0] == answers[1] and answers[0]
        text = heldout[:2000]
        (nll_pruned, n_pruned), (nll_full, n_full) = pruned.score(text), full.score(text)
    assert n_pruned == n_full > 100
    assert math.isclose(nll_pruned, nll_full, rel_tol=1e-4), (nll_pruned, nll_full)


def test_foundry_local_answers_a_pruned_build_like_onnxruntime_genai(tiny_build, tiny_eval, tmp_path):
    """Through the real Foundry Local SDK, with the build's own (greedy) search settings."""
    cache = tmp_path / "foundry-cache"
    installed = app.install(tiny_build("int4"), "tiny-pruned", cache_dir=cache)
    folder, found = app.resolve_target(installed.name, cache_dir=cache)
    for item in tiny_eval[:4]:
        foundry = app.open_session(folder, runtime="foundry", installed=found, cache_dir=cache)
        try:
            answer = "".join(foundry.generate(item["messages"], max_new_tokens=24))
        finally:
            foundry.close()
        ortgenai = app.open_session(folder)
        try:
            expected = "".join(ortgenai.generate(item["messages"], max_new_tokens=24))
        finally:
            ortgenai.close()
        assert answer == expected and answer
