"""Weight-by-weight quantization and the shared int8 embedding (plugins/slmk_ortgenai/weight_quant.py).

slmk replaces the 0.18 builder's whole-model quantization pass (which serializes a second
fp32 copy of every weight) with one that quantizes weight by weight on the builder's graph.
It must write the same model: every configuration below is built twice, once through the
builder's own pass and once through slmk's, and the two graphs must hold the same nodes
(names, types, inputs, outputs, attributes) and the same initializers, byte for byte;
except an int4 build's output layer raised to int8, which slmk quantizes at int8's block
size (its own test below).
The memory it saves is measured by benchmarks/peer_llamacpp.py, not here.

Tied models at int8 read the embedding from the output layer's int8 table
(GatherBlockQuantized, 8 bits) instead of keeping a float copy: checked for size and
against the fp32 build's logits.
"""

from __future__ import annotations

import contextlib
import functools
import json
from pathlib import Path

import numpy as np
import pytest
from architectures import make_tiny

from slmk import app
from slmk.fsutil import dir_size
from slmk.progress import Progress

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

import slmk_ortgenai.builder as builder_module  # noqa: E402  (the plugin package, on the test path)


@pytest.fixture(scope="module")
def tied_model(tmp_path_factory) -> Path:
    """The tiny Qwen2.5 of the architecture matrix: tie_word_embeddings is true."""
    folder = make_tiny.make_tiny_model("qwen2.5", tmp_path_factory.mktemp("tied") / "qwen2.5")
    assert json.loads((folder / "config.json").read_text())["tie_word_embeddings"] is True
    return folder


def _build(model: Path, out: Path, precision: str, options: dict, *, stream: bool, log: list | None = None) -> Path:
    """Build with slmk's quantization pass (stream) or the builder's own; separate step caches."""
    real = builder_module._builder_fixes
    builder_module._builder_fixes = functools.partial(real, stream_weights=stream)
    progress = Progress(quiet=True)
    if log is not None:
        progress.log = log.append
    try:
        app.convert(
            model,
            out,
            precision=precision,
            options=options,
            cache_dir=out.parent / f"cache-{out.name}",
            progress=progress,
        )
    finally:
        builder_module._builder_fixes = real
    return out


def _graph(build: Path) -> dict:
    import onnx

    model = onnx.load(str(build / "model.onnx"))
    nodes = {
        node.name: (
            node.op_type,
            node.domain,
            list(node.input),
            list(node.output),
            sorted((a.name, repr(onnx.helper.get_attribute_value(a))) for a in node.attribute),
        )
        for node in model.graph.node
    }

    def data(t):
        return t.raw_data if t.HasField("raw_data") else onnx.numpy_helper.to_array(t).tobytes()

    initializers = {t.name: (t.data_type, list(t.dims), data(t)) for t in model.graph.initializer}
    return {
        "nodes": nodes,
        "initializers": initializers,
        "opsets": sorted((o.domain, o.version) for o in model.opset_import),
        "ir_version": model.ir_version,
        "inputs": [i.name for i in model.graph.input],
        "outputs": [o.name for o in model.graph.output],
    }


CONFIGURATIONS = {
    # name: (model, precision, options)
    "untied int4 (embedding quantized by default)": ("tiny", "int4", {}),
    "untied int4, embedding kept float": ("tiny", "int4", {"op_types_to_quantize": "MatMul"}),
    # the builder's own pass keeps an int8 embedding in float; slmk's quantizes it (test below)
    "untied int8, embedding kept float": ("tiny", "int8", {"op_types_to_quantize": "MatMul"}),
    "untied int4 asymmetric, block 64": ("tiny", "int4", {"is_symmetric": "false", "block_size": "64"}),
    "untied int4, output layer kept float": ("tiny", "int4", {"nodes_to_exclude": "/lm_head/MatMul"}),
    "untied int4, accuracy level 0": ("tiny", "int4", {"accuracy_level": "0"}),
    "tied int4 (shared table)": ("tied", "int4", {}),
    "tied int8 (shared table)": ("tied", "int8", {}),
    "tied int4, output layer int8 (shared int8 table)": (
        "tied",
        "int4",
        {"matmul_mixed_precision": "last_matmul:int8"},
    ),
    "tied int4, own embedding quantized by Gather": (
        "tied",
        "int4",
        {"shared_embeddings": "false", "op_types_to_quantize": "MatMul/Gather"},
    ),
}


@pytest.mark.parametrize("name", list(CONFIGURATIONS))
def test_weight_by_weight_writes_what_the_builder_writes(name, tiny_model_dir, tied_model, tmp_path, monkeypatch):
    source, precision, options = CONFIGURATIONS[name]
    model = tiny_model_dir if source == "tiny" else tied_model
    log: list[str] = []
    # slices of a few columns, as the large weights of real models are quantized (64 MiB each)
    monkeypatch.setattr(builder_module.weight_quant, "SLICE_BYTES", 32 << 10)
    streamed = _build(model, tmp_path / "streamed", precision, options, stream=True, log=log)
    whole = _build(model, tmp_path / "whole", precision, options, stream=False)
    assert any("weight-by-weight quantization (" in line for line in log), log  # slmk's pass ran
    # ... handing the checkpoint's pages back as it went: the same bytes all the same
    assert any("the checkpoint's pages handed back after each" in line for line in log), log
    a, b = _graph(streamed), _graph(whole)
    assert a["nodes"].keys() == b["nodes"].keys()
    assert [k for k in a["nodes"] if a["nodes"][k] != b["nodes"][k]] == []
    assert a["initializers"].keys() == b["initializers"].keys()
    assert [k for k in a["initializers"] if a["initializers"][k] != b["initializers"][k]] == []
    assert (a["opsets"], a["ir_version"], a["inputs"], a["outputs"]) == (
        b["opsets"],
        b["ir_version"],
        b["inputs"],
        b["outputs"],
    )
    quantized = [n for n, v in a["nodes"].items() if v[0] in ("MatMulNBits", "GatherBlockQuantized")]
    assert quantized, "nothing was quantized"
    assert np.isfinite(_first_logits(streamed, [[5, 6, 7, 8]])).all()  # and it loads and runs


def test_an_int8_output_layer_in_an_int4_build_takes_int8s_block_size(tiny_model_dir, tmp_path):
    """The one place slmk's pass writes other bytes than the builder's: an int4 build's MatMuls
    upgraded to 8 bits (``matmul_mixed_precision``) at int8's block 128, not the build's 32.
    Everything else is the builder's; the output layer is what an int8 build writes for it."""
    options = {"matmul_mixed_precision": "last_matmul:int8"}
    streamed = _graph(_build(tiny_model_dir, tmp_path / "streamed", "int4", options, stream=True))
    whole = _graph(_build(tiny_model_dir, tmp_path / "whole", "int4", options, stream=False))
    int8 = _graph(_build(tiny_model_dir, tmp_path / "int8", "int8", {}, stream=True))
    head = "/lm_head/MatMul_Q8"
    table = ("lm_head.MatMul.weight_Q8", "lm_head.MatMul.weight_scales")

    assert streamed["nodes"].keys() == whole["nodes"].keys()
    assert [k for k in streamed["nodes"] if streamed["nodes"][k] != whole["nodes"][k]] == [head]
    assert streamed["initializers"].keys() == whole["initializers"].keys()
    differ = [k for k in streamed["initializers"] if streamed["initializers"][k] != whole["initializers"][k]]
    assert sorted(differ) == sorted(table)

    attributes = dict(streamed["nodes"][head][4])
    assert (attributes["bits"], attributes["block_size"]) == ("8", "128")
    assert dict(whole["nodes"][head][4])["block_size"] == "32"  # the builder's: the int4 build's block
    assert streamed["nodes"][head] == int8["nodes"][head]
    for name in table:
        assert streamed["initializers"][name] == int8["initializers"][name], name
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert len(streamed["initializers"][table[1]][2]) == 4 * config["vocab_size"] * config["hidden_size"] // 128
    assert np.isfinite(_first_logits(tmp_path / "streamed", [[5, 6, 7, 8]])).all()


def test_what_it_cannot_do_is_left_to_the_builder(tiny_model_dir, tmp_path):
    log: list[str] = []
    build = _build(tiny_model_dir, tmp_path / "rtn", "int4", {"algorithm": "rtn"}, stream=True, log=log)
    assert not any("weight-by-weight" in line for line in log), log
    assert any("none for quantization (method rtn)" in line for line in log), log
    assert any(v[0] == "MatMulNBits" for v in _graph(build)["nodes"].values())


# ------------------------------------------------------------------ the shared int8 embedding
def _first_logits(build: Path, prompts: list[list[int]]) -> np.ndarray:
    import onnxruntime_genai as og

    model = og.Model(str(build))
    rows = []
    for ids in prompts:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=64)
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
        rows.append(np.asarray(generator.get_output("logits"), dtype=np.float64)[0, -1])
        del generator
    return np.stack(rows)


def test_a_tied_int8_build_reads_its_embedding_from_the_output_layer(tied_model, tmp_path):
    import onnx

    log: list[str] = []
    # block 32 (int8's default is 128): the thresholds below were set for it on this random model,
    # whose nearly flat logits let a coarser block flip a near-tie (prompt 3's argmax at block 128)
    blocks = {"block_size": "32"}
    shared = _build(tied_model, tmp_path / "int8", "int8", blocks, stream=True, log=log)
    assert any("int8 embedding shared with the output layer" in line for line in log), log
    log.clear()
    apart = {**blocks, "shared_embeddings": "false", "op_types_to_quantize": "MatMul"}
    separate = _build(tied_model, tmp_path / "int8-separate", "int8", apart, stream=True, log=log)
    assert not any("int8 embedding shared" in line for line in log), log
    fp32 = _build(tied_model, tmp_path / "fp32", "fp32", {}, stream=True)

    graph = onnx.load(str(shared / "model.onnx"), load_external_data=False).graph
    gathers = [n for n in graph.node if n.op_type == "GatherBlockQuantized"]
    assert len(gathers) == 1
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in gathers[0].attribute}
    assert attributes["bits"] == 8
    assert not [t.name for t in graph.initializer if "embed_tokens" in t.name], "a separate embedding table is left"
    # the one int8 table is read by the output layer's MatMulNBits and, as [N, K] rows, by the embedding
    table = next(n for n in graph.node if n.op_type == "MatMulNBits" and n.name.startswith("/lm_head")).input[1]
    _assert_rows_read_from_the_file(graph, table)

    config = json.loads((tied_model / "config.json").read_text())
    table_bytes = config["vocab_size"] * config["hidden_size"] * 4
    assert dir_size(separate) - dir_size(shared) >= 0.9 * table_bytes  # the fp32 table is gone

    rng = np.random.default_rng(7)
    prompts = [rng.integers(3, config["vocab_size"] - 1, size=n).tolist() for n in (5, 17, 40)]
    reference = _first_logits(fp32, prompts)
    distance = {}
    for build in (separate, shared):
        logits = _first_logits(build, prompts)
        cosine = (logits * reference).sum(-1) / np.linalg.norm(logits, axis=-1) / np.linalg.norm(reference, axis=-1)
        assert (logits.argmax(-1) == reference.argmax(-1)).all(), build.name
        distance[build.name] = float((1 - cosine).max())
    # int8 rounding of the output layer dominates (on this random model: 1 - cosine 0.003);
    # reading the embedding from int8 too adds next to nothing to it
    assert distance["int8-separate"] < 0.01
    assert distance["int8"] < 1.5 * distance["int8-separate"] + 0.001, distance


@pytest.fixture(autouse=True)
def _no_leftover_patch():
    """Every build restores the builder's methods: a later build sees the builder as shipped."""
    yield
    with contextlib.suppress(ImportError):
        import onnxruntime_genai.models.builder as module

        for name in builder_module._BASE_PATCHES:
            assert module.Model.__dict__[name].__module__.startswith("builders."), name


@pytest.fixture(scope="module")
def padded_tied_model(tied_model, tmp_path_factory) -> Path:
    """The tied tiny Qwen2.5 with hidden size 48: its rows are not whole blocks of 32."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tied_model)
    config.hidden_size, config.intermediate_size = 48, 96
    config.num_attention_heads, config.num_key_value_heads, config.head_dim = 3, 1, 16
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("padded") / "qwen2.5-h48"
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    for item in tied_model.iterdir():
        if item.name not in ("config.json",) and not item.name.endswith(".safetensors"):
            shutil.copy(item, folder / item.name)
    return folder


def test_a_shared_int8_table_with_padded_rows_reads_the_right_values(padded_tied_model, tmp_path):
    import onnx

    fp32 = _build(padded_tied_model, tmp_path / "fp32", "fp32", {}, stream=True)
    int8 = _build(padded_tied_model, tmp_path / "int8", "int8", {}, stream=True)
    graph = onnx.load(str(int8 / "model.onnx"), load_external_data=False).graph
    assert [n.op_type for n in graph.node if n.name.startswith("/model/embed_tokens/")] == [
        "GatherBlockQuantized",
        "Slice",  # the padding of each row to whole blocks is cut off after the lookup
    ]
    prompts = [[5, 17, 33, 90, 120], [7, 8, 9]]
    logits, reference = _first_logits(int8, prompts), _first_logits(fp32, prompts)
    cosine = (logits * reference).sum(-1) / np.linalg.norm(logits, axis=-1) / np.linalg.norm(reference, axis=-1)
    assert cosine.min() > 0.999 and (logits.argmax(-1) == reference.argmax(-1)).all(), cosine


# ------------------------------------------------------------------ an untied int8/int4 embedding
def _dequantized_embedding(build: Path, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The embedding table as GatherBlockQuantized reads it (signed code x its block's scale), and its steps.

    8 bits: uint8 codes offset by 128 (MatMulNBits' symmetric int8 layout); 4 bits: int4 codes, no offset.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(build / "model.onnx"))
    gather = next(n for n in model.graph.node if n.op_type == "GatherBlockQuantized")
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in gather.attribute}
    assert (attributes.get("bits", 4), attributes["quantize_axis"], attributes["gather_axis"]) == (bits, 1, 0)
    assert len(gather.input) == 3  # symmetric: no zero points
    tensors = {t.name: t for t in model.graph.initializer}
    data_type = onnx.TensorProto.UINT8 if bits == 8 else onnx.TensorProto.INT4
    assert tensors[gather.input[0]].data_type == data_type
    codes = numpy_helper.to_array(tensors[gather.input[0]]).astype(np.float64) - (128 if bits == 8 else 0)
    scales = numpy_helper.to_array(tensors[gather.input[2]]).astype(np.float64)
    block = attributes["block_size"]
    assert codes.min() >= -(2 ** (bits - 1)) and codes.max() < 2 ** (bits - 1)
    assert scales.shape == (codes.shape[0], -(-codes.shape[1] // block))
    steps = np.repeat(scales, block, axis=1)[:, : codes.shape[1]]
    return codes * steps, np.abs(steps)


#: How close the first logits of a build with its table quantized stay to fp32's (the int4 MatMuls cost the most).
MIN_LOGIT_COSINE = {"int8": 0.999, "int4": 0.99}


@pytest.mark.parametrize("block_size", ["32", "128"])
@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_a_quantized_build_quantizes_its_own_embedding_table(precision, block_size, tiny_model_dir, tmp_path):
    """The untied tiny chat model: its table is quantized by default, within half a step of each weight, and answers."""
    import onnxruntime_genai as og
    from safetensors.numpy import load_file

    bits = int(precision.removeprefix("int"))
    options = {"block_size": block_size}
    log: list[str] = []
    quantized = _build(tiny_model_dir, tmp_path / precision, precision, options, stream=True, log=log)
    assert any("op_types_to_quantize=MatMul/Gather" in line for line in log), log
    kept = _build(
        tiny_model_dir, tmp_path / "float", precision, {**options, "op_types_to_quantize": "MatMul"}, stream=True
    )
    fp32 = _build(tiny_model_dir, tmp_path / "fp32", "fp32", {}, stream=True)
    kept_ops = {v[0] for v in _graph(kept)["nodes"].values()}
    assert "GatherBlockQuantized" not in kept_ops and "Gather" in kept_ops

    table = load_file(tiny_model_dir / "model.safetensors")["model.embed_tokens.weight"].astype(np.float64)
    dequantized, steps = _dequantized_embedding(quantized, bits)
    assert dequantized.shape == table.shape
    # a step is a block's largest magnitude / 2^(bits-1) (MLAS's symmetric int8 as MatMulNBits' weights; ONNX
    # Runtime's int4 Gather, codes -8..7): a weight is rounded to the nearest step, except that codes stop one
    # step short of the largest magnitude on one side (+127 / +7 steps)
    largest = np.repeat(np.abs(table).reshape(table.shape[0], -1, int(block_size)).max(-1), int(block_size), 1)
    assert np.allclose(steps, largest / 2 ** (bits - 1), rtol=1e-5, atol=1e-12)
    error = np.abs(dequantized - table)
    assert (error <= steps + 1e-7).all() and np.mean(error <= steps / 2 + 1e-7) > 0.99
    assert dir_size(kept) - dir_size(quantized) >= 0.7 * table.size * 4  # 4 bytes a weight -> about 1.1 / 0.6

    prompts = [[5, 17, 33, 90, 120], [7, 8, 9], list(range(40, 80))]
    reference = _first_logits(fp32, prompts)
    for build in (quantized, kept):
        logits = _first_logits(build, prompts)
        cosine = (logits * reference).sum(-1) / np.linalg.norm(logits, axis=-1) / np.linalg.norm(reference, axis=-1)
        assert cosine.min() > MIN_LOGIT_COSINE[precision], (build.name, cosine)
        if precision == "int8":
            assert (logits.argmax(-1) == reference.argmax(-1)).all(), build.name
    # the real runtime generates real tokens through the quantized table
    model = og.Model(str(quantized))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=24, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompts[0])
    while not generator.is_done():
        generator.generate_next_token()
    new_tokens = list(generator.get_sequence(0))[len(prompts[0]) :]
    assert len(new_tokens) >= 1 and all(0 <= t < table.shape[0] for t in new_tokens), new_tokens
    del generator, model


def test_an_int8_embedding_with_padded_rows_reads_the_right_values(padded_tied_model, tmp_path):
    """Hidden size 48 with blocks of 32: the last block of each row is partial, and nothing is padded in."""
    options = {"shared_embeddings": "false"}
    int8 = _build(padded_tied_model, tmp_path / "int8", "int8", options, stream=True)
    fp32 = _build(padded_tied_model, tmp_path / "fp32", "fp32", {}, stream=True)
    from safetensors.numpy import load_file

    table = load_file(padded_tied_model / "model.safetensors")["model.embed_tokens.weight"].astype(np.float64)
    dequantized, steps = _dequantized_embedding(int8)
    assert dequantized.shape == table.shape and (np.abs(dequantized - table) <= steps + 1e-7).all()
    prompts = [[5, 17, 33, 90, 120], [7, 8, 9]]
    logits, reference = _first_logits(int8, prompts), _first_logits(fp32, prompts)
    cosine = (logits * reference).sum(-1) / np.linalg.norm(logits, axis=-1) / np.linalg.norm(reference, axis=-1)
    assert cosine.min() > 0.999 and (logits.argmax(-1) == reference.argmax(-1)).all(), cosine


@pytest.mark.parametrize("precision", ["int8", "int4"])
@pytest.mark.parametrize("algorithm", ["rtn", "k_quant"])
def test_an_embedding_the_builder_would_leave_in_float_is_refused(precision, algorithm, tiny_model_dir, tmp_path):
    """ONNX Runtime's rtn and k_quant passes quantize MatMuls only: an own table asked for with Gather stays float."""
    from slmk.errors import UsageError

    options = {"op_types_to_quantize": "MatMul/Gather", "algorithm": algorithm}
    with pytest.raises(UsageError, match=f"at {precision} needs the default algorithm, not {algorithm}"):
        _build(tiny_model_dir, tmp_path / algorithm, precision, options, stream=True)


def test_a_tied_int4_embedding_with_rtn_reads_the_output_layers_table(tied_model, tmp_path):
    """Not refused for a tied model: its int4 embedding reads the output layer's table, which rtn quantizes."""
    options = {"op_types_to_quantize": "MatMul/Gather", "algorithm": "rtn"}
    build = _build(tied_model, tmp_path / "rtn", "int4", options, stream=True)
    assert "GatherBlockQuantized" in {v[0] for v in _graph(build)["nodes"].values()}


# ------------------------------------------------------------------ one copy of the shared table at run time
def _assert_rows_read_from_the_file(graph, table: str) -> None:
    """The embedding's Gather reads its own [N, K] initializer over the very bytes of the output layer's table."""
    tensors = {t.name: t for t in graph.initializer}
    gather = next(n for n in graph.node if n.op_type == "GatherBlockQuantized")
    rows = tensors[gather.input[0]]
    assert rows.name != table and not [n for n in graph.node if n.op_type == "Reshape" and table in n.input]
    assert list(rows.external_data) == list(tensors[table].external_data)  # same file, offset, length
    dims = list(tensors[table].dims)
    assert list(rows.dims) == [dims[0], dims[1] * dims[2]]


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_a_shared_table_is_read_in_place_and_answers_the_same(precision, tied_model, tmp_path, monkeypatch):
    log: list[str] = []
    in_place = _build(tied_model, tmp_path / precision, precision, {}, stream=True, log=log)
    assert any("reads the shared table's rows from the data file" in line for line in log), log
    # the same build with the builder's Reshape left in (slmk's rewrite switched off)
    monkeypatch.setattr(builder_module.weight_quant, "gather_rows_from_file", lambda build: 0)
    reshaped = _build(tied_model, tmp_path / f"{precision}-reshaped", precision, {}, stream=True)
    import onnx

    graph = onnx.load(str(in_place / "model.onnx"), load_external_data=False).graph
    _assert_rows_read_from_the_file(
        graph, "lm_head.MatMul.weight_Q8" if precision == "int8" else "lm_head.MatMul.weight_Q4"
    )
    assert (in_place / "model.onnx.data").read_bytes() == (reshaped / "model.onnx.data").read_bytes()
    config = json.loads((tied_model / "config.json").read_text())
    rng = np.random.default_rng(3)
    prompts = [rng.integers(3, config["vocab_size"] - 1, size=n).tolist() for n in (4, 23)]
    assert np.array_equal(_first_logits(in_place, prompts), _first_logits(reshaped, prompts))


def test_a_table_not_in_a_data_file_is_left_alone(tmp_path):
    """gather_rows_from_file rewrites nothing it cannot point at file bytes (an inline table)."""
    import onnx
    from onnx import TensorProto, helper
    from slmk_ortgenai import weight_quant

    table = helper.make_tensor("table", TensorProto.UINT8, [4, 1, 8], bytes(range(32)), raw=True)
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [4, 8])
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4, 1], [1.0] * 4)
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["table", "shape"], ["rows"]),
            helper.make_node(
                "GatherBlockQuantized", ["rows", "ids", "scales"], ["out"], domain="com.microsoft", bits=8, block_size=8
            ),
        ],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8])],
        [table, shape, scales],
    )
    onnx.save(helper.make_model(graph), str(tmp_path / "model.onnx"))
    before = (tmp_path / "model.onnx").read_bytes()
    assert weight_quant.gather_rows_from_file(tmp_path) == 0
    assert (tmp_path / "model.onnx").read_bytes() == before


# ------------------------------------------------------------------ the checkpoint's pages
def _resident_kib(path: Path) -> int:
    """Resident KiB of this process's mappings of ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split(None, 5)
        if head and "-" in head[0] and not head[0].endswith(":"):
            inside = len(head) > 5 and head[5].strip() == str(path.resolve())
        elif inside and head[0] == "Rss:":
            total += int(head[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").is_file(), reason="reads /proc/self/smaps (Linux)")
def test_checkpoint_pages_are_handed_back_and_read_again_the_same(tmp_path):
    from slmk_ortgenai.weight_quant import CheckpointPages

    data = np.random.default_rng(0).integers(0, 255, size=8 << 20, dtype=np.uint8)
    (tmp_path / "model.safetensors").write_bytes(data.tobytes())
    (tmp_path / "other.bin").write_bytes(data.tobytes())
    checkpoint = tmp_path / "model.safetensors"
    clean = np.memmap(checkpoint, mode="r")  # read-only: as the checkpoint's tensors are read
    other = np.memmap(tmp_path / "other.bin", mode="r")
    assert int(clean.sum(dtype=np.int64)) == int(other.sum(dtype=np.int64))  # every page read
    assert _resident_kib(checkpoint) >= 8 << 10
    pages = CheckpointPages(tmp_path)
    pages.release()
    assert pages.released == 1
    assert _resident_kib(checkpoint) == 0
    assert _resident_kib(tmp_path / "other.bin") >= 8 << 10  # not a checkpoint file: left alone
    assert np.array_equal(clean, data)  # faulted in again from the file, same bytes
    del clean

    written = np.memmap(checkpoint, mode="c")  # private and writable, as torch maps a checkpoint
    assert int(written.sum(dtype=np.int64)) == int(data.sum(dtype=np.int64))
    pages.release()
    assert pages.released == 2 and _resident_kib(checkpoint) == 0  # unchanged: handed back too
    written[5] = data[5] ^ 0xFF  # now a page is copied on write
    pages.release()
    assert pages.released == 2  # a mapping with a changed page is left alone
    assert written[5] == data[5] ^ 0xFF
    del written, other


# ------------------------------------------------------------------ half-precision checkpoints, loaded as stored
def _as_bf16(folder: Path, out: Path) -> Path:
    """A copy of ``folder`` whose weights are stored in bf16, as most published checkpoints are."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(folder, out)
    for file in out.glob("*.safetensors"):
        save_file({k: v.to(torch.bfloat16) for k, v in load_file(str(file)).items()}, str(file), {"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    config["dtype"] = "bfloat16"
    (out / "config.json").write_text(json.dumps(config))
    return out


# Two of the four pairs (each builds twice, 1-3 minutes on 2 cores): both architectures, both precisions.
@pytest.mark.parametrize(("precision", "architecture"), [("int8", "qwen2.5"), ("int4", "phi4-mini")])
def test_a_bf16_checkpoint_loaded_as_stored_builds_what_the_fp32_load_builds(
    architecture, precision, tmp_path, monkeypatch
):
    """Loaded in bf16 and cast slice by slice, the build is the builder's fp32 load's, byte for byte."""
    model = _as_bf16(make_tiny.make_tiny_model(architecture, tmp_path / "fp32"), tmp_path / "bf16")
    monkeypatch.setattr(builder_module.weight_quant, "SLICE_BYTES", 32 << 10)
    log: list[str] = []
    as_stored = _build(model, tmp_path / "as-stored", precision, {}, stream=True, log=log)
    assert any("checkpoint loaded as stored (bfloat16)" in line for line in log), log
    log.clear()
    monkeypatch.setattr(builder_module, "LOAD_AS_STORED", ())  # the builder's own fp32 load
    fp32_load = _build(model, tmp_path / "fp32-load", precision, {}, stream=True, log=log)
    assert not any("loaded as stored" in line for line in log), log
    a, b = _graph(as_stored), _graph(fp32_load)
    assert a["nodes"] == b["nodes"]
    assert a["initializers"].keys() == b["initializers"].keys()
    assert [k for k in a["initializers"] if a["initializers"][k] != b["initializers"][k]] == []
    assert (as_stored / "model.onnx.data").read_bytes() == (fp32_load / "model.onnx.data").read_bytes()
