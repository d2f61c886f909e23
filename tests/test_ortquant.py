"""ONNX-level quantizers, for real: onnxruntime's MatMulNBits quantizer on an fp32 build of
the tiny model; the ortgenai runtime loads and generates from every result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmk import app
from slmk.errors import UsageError

pytestmark = [pytest.mark.usefixtures("one_torch_thread")]


def _model_bytes(build: Path) -> int:
    return sum(p.stat().st_size for p in build.iterdir() if p.name.startswith("model.onnx"))


def _matmul_nbits(build: Path) -> list:
    import onnx

    model = onnx.load(str(build / "model.onnx"), load_external_data=False)
    return [node for node in model.graph.node if node.op_type == "MatMulNBits"]


def _attributes(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _generates(build: Path) -> int:
    session = app.open_session(build)
    try:
        text = "".join(session.generate([{"role": "user", "content": "Hello!"}], max_new_tokens=8, do_sample=False))
        assert isinstance(text, str)
        return session.last_stats.generated_tokens
    finally:
        session.close()


@pytest.fixture(scope="module")
def fp32_build(tiny_build) -> Path:
    return tiny_build("fp32")


@pytest.mark.parametrize(
    ("quantizer", "precision", "bits"),
    [
        ("ortquant-int4", "int4", 4),
        ("ortquant-int8", "int8", 8),
        ("ortquant-hqq", "int4", 4),
    ],
)
def test_onnx_quantizer_on_fp32_build(quantizer, precision, bits, fp32_build, tiny_model_dir, tmp_path):
    out = tmp_path / quantizer
    result = app.convert(tiny_model_dir, out, precision=precision, via=quantizer)
    assert result.plan.shape == "convert-quantize"
    assert [(s.kind, s.tool, s.precision) for s in result.steps] == [
        ("convert", "ortgenai-builder", "fp32"),
        ("quantize", quantizer, precision),
    ]
    # The fp32 step is the one tiny_build("fp32") made: the step cache serves it.
    assert result.steps[0].status == "cached"
    nodes = _matmul_nbits(out)
    assert nodes and {_attributes(n)["bits"] for n in nodes} == {bits}
    # Weights live in the external data file the graph names; nothing else was renamed.
    assert (out / "model.onnx.data").is_file()
    assert json.loads((out / "genai_config.json").read_text())["model"]["decoder"]["filename"] == "model.onnx"
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file()
    assert _model_bytes(out) < _model_bytes(fp32_build)
    assert _generates(out) > 0


def test_int8_is_larger_than_int4_and_both_smaller_than_fp32(fp32_build, tiny_model_dir, tmp_path):
    int4 = app.convert(tiny_model_dir, tmp_path / "int4", precision="int4", via="ortquant")
    int8 = app.convert(tiny_model_dir, tmp_path / "int8", precision="int8", via="ortquant")
    assert [s.tool for s in int4.steps] == ["ortgenai-builder", "ortquant-int4"]
    assert [s.tool for s in int8.steps] == ["ortgenai-builder", "ortquant-int8"]
    sizes = {"fp32": _model_bytes(fp32_build), "int8": _model_bytes(int8.output), "int4": _model_bytes(int4.output)}
    print(f"\nmodel.onnx + data bytes: {sizes}")
    assert sizes["int4"] < sizes["int8"] < sizes["fp32"]


def test_block_size_symmetry_and_accuracy_level_reach_the_graph(fp32_build, tiny_model_dir, tmp_path):
    out = tmp_path / "asym64"
    app.convert(
        tiny_model_dir,
        out,
        precision="int4",
        via="ortquant-int4",
        quantization={"block_size": 64, "is_symmetric": False, "accuracy_level": 1},
    )
    nodes = _matmul_nbits(out)
    attributes = [_attributes(node) for node in nodes]
    assert {a["block_size"] for a in attributes} == {64}
    assert {a.get("accuracy_level") for a in attributes} == {1}
    assert all(len(node.input) >= 4 and node.input[3] for node in nodes), "asymmetric weights carry zero points"
    assert _generates(out) > 0


def test_bad_block_size_is_a_usage_error(fp32_build, tiny_model_dir, tmp_path):
    with pytest.raises(UsageError, match="block_size=48"):
        app.convert(
            tiny_model_dir, tmp_path / "bad", precision="int4", via="ortquant-int4", quantization={"block_size": 48}
        )
    assert not (tmp_path / "bad").exists()


def test_default_int4_plan_stays_with_the_builder(tiny_model_dir, tmp_path):
    plan = app.convert(tiny_model_dir, tmp_path / "out", precision="int4", plan_only=True)
    assert [step.tool for step in plan.steps] == ["ortgenai-builder"]
    hqq = app.convert(
        tiny_model_dir, tmp_path / "out", precision="int4", quantization={"algorithm": "hqq"}, plan_only=True
    )
    assert [step.tool for step in hqq.steps] == ["ortgenai-builder", "ortquant-hqq"]
