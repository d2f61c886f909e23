"""int4/int8 builds list the output layer first, so ONNX Runtime prepacks it first (a lower load peak).

The peak itself is measured in docs/benchmarks.md (a 0.5B shape); here: the real builds of
the tiny model have the order, and they answer exactly as the builder's order does.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _nodes(build):
    import onnx

    return list(onnx.load(str(build / "model.onnx"), load_external_data=False).graph.node)


def _builder_order(build, out):
    """A copy of ``build`` whose output layer is back where the builder put it: after its inputs' producers."""
    import onnx

    out.mkdir()
    for item in build.iterdir():
        if item.is_file() and item.name != "model.onnx":
            os.link(item, out / item.name) if item.name == "model.onnx.data" else shutil.copy(item, out / item.name)
    model = onnx.load(str(build / "model.onnx"), load_external_data=False)
    first, rest = model.graph.node[0], list(model.graph.node[1:])
    produced_at = {output: index for index, node in enumerate(rest) for output in node.output}
    after = max(produced_at.get(name, -1) for name in first.input) + 1
    del model.graph.node[:]
    model.graph.node.extend([*rest[:after], first, *rest[after:]])
    onnx.save(model, str(out / "model.onnx"))
    return out


def _answers(build, prompt):
    import onnxruntime_genai as og

    model = og.Model(str(build))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + 8, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    logits = np.array(generator.get_logits())
    tokens = []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return logits, tokens


@pytest.mark.parametrize("precision", ["int4", "int8"])
def test_the_output_layer_is_packed_first_and_answers_the_same(precision, tiny_build, tmp_path):
    build = tiny_build(precision)
    nodes = _nodes(build)
    packed = [n for n in nodes if n.op_type == "MatMulNBits"]
    assert nodes[0].op_type == "MatMulNBits" and "lm_head" in nodes[0].name, [n.name for n in nodes[:3]]
    sizes = {n.name: {a.name: a.i for a in n.attribute} for n in packed}
    assert max(sizes, key=lambda name: sizes[name]["N"] * sizes[name]["K"]) == nodes[0].name

    before = _builder_order(build, tmp_path / "builder-order")
    assert _nodes(before)[0].name != nodes[0].name
    prompt = [5, 17, 40, 33, 8, 91, 12]
    logits, tokens = _answers(build, prompt)
    logits_before, tokens_before = _answers(before, prompt)
    assert np.array_equal(logits, logits_before)
    assert tokens == tokens_before


def test_a_build_in_that_order_already_is_left_alone(tiny_build, tmp_path):
    from slmk_ortgenai import prepack_order

    copy = tmp_path / "copy"
    shutil.copytree(tiny_build("int4"), copy)
    before = (copy / "model.onnx").read_bytes()
    assert prepack_order.output_layer_first(copy) is None
    assert (copy / "model.onnx").read_bytes() == before
    # and a build in the builder's order is reordered
    again = _builder_order(copy, tmp_path / "again")
    assert prepack_order.output_layer_first(again) == _nodes(copy)[0].name
    assert (again / "model.onnx").read_bytes() == before
