"""Weight-by-weight int4/int8 quantization for the 0.18 model builder, and a shared int8 embedding.

The builder quantizes after it has built the whole float graph: ``to_nbits`` serializes
that graph to one ModelProto (a second fp32 copy of every weight, on top of the one the
loaded checkpoint holds), hands it to ONNX Runtime's ``MatMulNBitsQuantizer`` and parses
the result back. For a 0.5B model that peaks at 2.8x the fp32 size. ``stream_to_nbits``
does the same quantization on the builder's graph in place, one weight at a time: each
float weight is read, quantized by the same ONNX Runtime functions
(``DefaultWeightOnlyQuantizer.qbits_block_quant`` / ``quantize_ndarray``), replaced, and
released, so the float weights are never copied as a whole. The output is the builder's:
same nodes, names, attributes and bytes (tests/test_weight_quant.py compares them), but for
one deliberate difference: a MatMul raised to 8 bits in a 4-bit build takes int8's block size
(``_matmul_block_size``).

Only the builder's default method in the QOperator format is done this way; anything
else (rtn, k_quant, QDQ, CUDA prepacking, exact per-node overrides, several upgrade
widths, weights inside subgraphs) is left to the builder's own pass.

The 0.18 builder shares a tied embedding with the output layer only at 4 bits: at int8
it keeps the input embedding as a separate float table (for Qwen2.5-0.5B, 519 MB of a
1,051 MB build). ONNX Runtime's GatherBlockQuantized reads 8-bit blocks too, in the
layout MatMulNBits uses, so ``share_int8_embedding`` lets the embedding read the output
layer's int8 table, as the builder already does at int4.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: What the pass records on the builder for slmk's log: weights quantized by kind, or why it could not.
STREAMED_ATTR = "_slmk_streamed_weights"
#: How many times the pass handed the checkpoint's memory-mapped pages back (0: none were mapped read-only).
RELEASED_ATTR = "_slmk_checkpoint_pages_released"
WHOLE_MODEL_ATTR = "_slmk_whole_model_reason"
#: The builder's name for the output layer's MatMul.
LM_HEAD_NODE = "/lm_head/MatMul"

#: ONNX names of the weight types the quantizer takes as they are (bf16 goes through fp32 there).
_FLOAT_DTYPES = ("FLOAT", "FLOAT16")
#: Bit widths at which this pass quantizes a Gather (an embedding table). ONNX Runtime's quantizer
#: does 4 only and leaves an 8-bit Gather in float; GatherBlockQuantized reads 8-bit blocks in
#: MatMulNBits' layout, which is how this pass writes them (``_gather_block_quantized_8bits``).
GATHER_BITS = (4, 8)


# ------------------------------------------------------------------ eligibility
def _plan(builder: Any) -> tuple[str | None, dict[str, int]]:
    """(why the builder's own pass must run, or None; node name -> bits for each weight to quantize)."""
    qa = builder.quant_attrs
    if getattr(builder, "quantization_algo", "default") != "default":
        return f"method {builder.quantization_algo}", {}
    if qa.get("use_qdq"):
        return "QDQ format", {}
    if getattr(builder, "exact_quant_override_names", None):
        return "exact quantization overrides", {}
    if getattr(builder, "ep", "cpu") == "cuda" and getattr(builder, "matmul_attrs", {}).get("weights_prepacked", 0) > 0:
        return "CUDA weight prepacking", {}
    customized = getattr(builder, "int4_customized_weight_config", None) or {}
    upgrades = {name: int(cfg["bits"]) for name, cfg in customized.items()}
    if len(set(upgrades.values())) > 1:
        return "several upgrade bit widths", {}
    excluded = set(qa.get("nodes_to_exclude") or ())
    op_types = set(qa.get("op_types_to_quantize") or ()) or {"MatMul"}
    graph = builder.model.graph
    plan: dict[str, int] = {}
    for node in graph.all_nodes():
        if node.op_type not in ("MatMul", "Gather") or node.domain not in ("", "ai.onnx"):
            continue
        if node.name in excluded or (node.op_type not in op_types and node.name not in upgrades):
            continue
        weight = _weight(node)
        if weight is None:
            continue  # not a constant: the quantizer keeps such a node as it is
        bits = upgrades.get(node.name, qa["bits"])
        if node.op_type == "Gather" and bits not in GATHER_BITS:
            continue
        if node.graph is not graph:
            return "a weight inside a subgraph", {}
        tensor = weight.const_value
        if tensor.dtype.name not in _FLOAT_DTYPES:
            return f"{tensor.dtype.name} weights", {}
        if node.op_type == "MatMul" and len(tensor.shape) != 2:
            return f"a {len(tensor.shape)}-D MatMul weight", {}
        if node.op_type == "Gather" and bits == 8 and not _is_token_embedding(node, tensor):
            continue  # 8 bits for the token embedding only (a cos/sin cache looked up by position stays float)
        plan[node.name] = bits
    return None, plan


def _is_token_embedding(node: Any, tensor: Any) -> bool:
    """A 2-D table whose rows are looked up by a graph input (the token ids)."""
    ids = node.inputs[1] if len(node.inputs) > 1 else None
    return len(tensor.shape) == 2 and _gather_axis(node) == 0 and ids is not None and ids.is_graph_input()


def _gather_axis(node: Any) -> int:
    return node.attributes["axis"].as_int() if "axis" in node.attributes else 0


def _weight(node: Any) -> Any:
    index = 0 if node.op_type == "Gather" else 1
    if len(node.inputs) <= index or node.inputs[index] is None:
        return None
    value = node.inputs[index]
    return value if value.const_value is not None and value.is_initializer() else None


# ------------------------------------------------------------------ the pass
def stream_to_nbits(builder: Any, original: Any) -> Any:
    """``Model.to_nbits`` done weight by weight on the builder's graph; the builder's own where it must."""
    reason, plan = _plan(builder)
    if reason is not None:
        setattr(builder, WHOLE_MODEL_ATTR, reason)
        print(f"slmk: the builder quantizes the whole model at once ({reason})")
        return original(builder)
    import numpy as np
    import onnx_ir as ir
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        DefaultWeightOnlyQuantizer,
        QuantFormat,
    )

    qa = builder.quant_attrs
    op_types = tuple(qa.get("op_types_to_quantize") or ()) or ("MatMul",)
    quantizers: dict[tuple[int, int], Any] = {}

    def quantizer(bits: int, block_size: int = qa["matmul_block_size"]) -> Any:
        if (bits, block_size) not in quantizers:
            config = DefaultWeightOnlyQuantConfig(
                block_size=block_size,
                is_symmetric=qa["is_symmetric"],
                accuracy_level=qa["accuracy_level"],
                quant_format=QuantFormat.QOperator,
                op_types_to_quantize=op_types,
                bits=bits,
            )
            quantizers[(bits, block_size)] = DefaultWeightOnlyQuantizer(config)
        return quantizers[(bits, block_size)]

    model, graph = builder.model, builder.model.graph
    values: dict[str, Any] = builder.values

    def initializer(name: str, tensor: Any) -> Any:
        # A placeholder of this name may already exist: the tied embedding's
        # GatherBlockQuantized was built reading the output layer's quantized table.
        value = values.get(name)
        if value is None or value.producer() is not None or value.const_value is not None:
            value = ir.Value(name=name)
        value.const_value = tensor
        value.dtype = tensor.dtype
        value.shape = ir.Shape(tensor.shape)
        graph.register_initializer(value)
        values[name] = value
        return value

    def replace(node: Any, new: Any) -> None:
        graph.insert_before(node, new)
        old, out = node.outputs[0], new.outputs[0]
        out.dtype, out.shape = old.dtype, old.shape
        old.replace_all_uses_with(out, replace_graph_outputs=True)
        name = old.name
        old.name = None
        out.name = name
        values[name] = out
        graph.remove(node, safe=True)

    def release(weight: Any) -> None:
        if not weight.uses() and not weight.is_graph_output():
            graph.initializers.pop(weight.name, None)
            if values.get(weight.name) is weight:
                del values[weight.name]
            weight.const_value = None  # the last reference to the float weight (the checkpoint's tensor)

    checkpoint = CheckpointPages(Path(str(getattr(builder, "model_name_or_path", "") or ".")))
    counts: dict[str, int] = {}
    # Largest first: the checkpoint's pages stay resident once read (a memory map of the
    # file), so the big table's transient copies are cheapest before the rest is read.
    nodes = sorted((node for node in graph if node.name in plan), key=lambda n: -_weight(n).const_value.nbytes)
    for node in nodes:
        bits = plan[node.name]
        weight = _weight(node)
        if node.op_type == "MatMul":
            matmul_quantizer = quantizer(bits, _matmul_block_size(builder, node, bits))
            new = _matmul_nbits(ir, matmul_quantizer, node, weight, bits, initializer, checkpoint)
        elif bits == 8:
            new = _gather_block_quantized_8bits(ir, quantizer(bits), node, weight, initializer, checkpoint)
        else:
            source, dtype = _source(weight.const_value, ir)
            array = _contiguous(source, np, dtype=dtype)
            del source
            new = _gather_block_quantized(ir, quantizer(bits), node, weight, array, initializer)
            checkpoint.read(array.nbytes)
            del array
        replace(node, new)
        release(weight)
        key = f"{node.op_type} int{bits}"
        counts[key] = counts.get(key, 0) + 1

    for name, value in list(graph.initializers.items()):  # as the quantizer's clean_initializers
        if not value.uses() and not value.is_graph_output():
            graph.initializers.pop(name)
    graph.opset_imports["com.microsoft"] = 1
    if "Gather" in op_types and graph.opset_imports.get("", 1) < 21:
        graph.opset_imports[""] = 21  # INT4 tensors need opset 21 and IR version 10
    if model.ir_version < 10:
        model.ir_version = 10
    setattr(builder, STREAMED_ATTR, counts)
    setattr(builder, RELEASED_ATTR, checkpoint.released)
    print("slmk: quantized weight by weight: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return model


def _matmul_block_size(builder: Any, node: Any, bits: int) -> int:
    """The build's block size, or int8's own for a MatMul upgraded to 8 bits in a 4-bit build.

    ``matmul_mixed_precision`` upgrades (the output layer, the mixed layers) would otherwise
    take the int4 build's block (32 by default): at 8 bits block 128 holds a quarter of the
    scales and scores the same perplexity (slmk's int8 default, builder.INT8_BLOCK_SIZE). A
    tied output layer keeps the build's block: the builder made the embedding's lookup of
    that shared table with it.
    """
    from .builder import INT8_BLOCK_SIZE

    block_size = builder.quant_attrs["matmul_block_size"]
    if bits != 8 or bits == builder.quant_attrs["bits"]:
        return block_size
    if node.name == LM_HEAD_NODE and getattr(builder, "tied_quantized_embeddings", False):
        return block_size
    return max(block_size, INT8_BLOCK_SIZE)


class CheckpointPages:
    """Hands the checkpoint's pages back to the kernel as the weights they hold are quantized.

    The builder's float weights are torch tensors over the safetensors files, memory-mapped:
    a page read stays in the process's resident set until the file is unmapped at the end of
    the build, so a conversion held the whole fp32 checkpoint once the pass had read it
    (0.5B-shaped int4: 2,009 of 2,617 MiB peak were the file's pages). After each weight,
    ``madvise(MADV_DONTNEED)`` drops the resident pages of the checkpoint's mappings: they
    are the file's bytes (a mapping with a page copied on write is left alone), and a weight
    still to be read faults its pages in again from the page cache, with the same bytes.
    Linux only (it reads /proc/self/smaps); elsewhere it does nothing.
    """

    MADV_DONTNEED = 4

    def __init__(self, source: Path) -> None:
        # the files as mapped: a hub cache's snapshot links them to blobs elsewhere
        self.files = {str(path.resolve()) for path in source.glob("*.safetensors")} if source.is_dir() else set()
        self.enabled = bool(self.files) and Path("/proc/self/smaps").is_file()
        self.released = 0
        self.pending = 0  # bytes of weights read since the pages were last handed back

    def _unchanged_mappings(self) -> list[tuple[int, int]]:
        """Address ranges of the checkpoint files' mappings where no page was copied on write.

        torch maps the files private and writable; a page written to would be an anonymous
        copy (smaps' ``Anonymous``), and dropping it would bring back the file's bytes.
        """
        ranges, current, unchanged = [], None, True
        with open("/proc/self/smaps", encoding="utf-8", errors="replace") as smaps:
            for line in smaps:
                fields = line.split(None, 5)
                if fields and "-" in fields[0] and not fields[0].endswith(":"):
                    if current is not None and unchanged:
                        ranges.append(current)
                    inside = len(fields) > 5 and fields[5].strip() in self.files
                    current = tuple(int(x, 16) for x in fields[0].split("-")) if inside else None
                    unchanged = True
                elif current is not None and fields[0] == "Anonymous:":
                    unchanged = fields[1] == "0"
        if current is not None and unchanged:
            ranges.append(current)
        return ranges

    def read(self, nbytes: int) -> None:
        """``nbytes`` of weights were read: hand the pages back every SLICE_BYTES (reading smaps takes ~30 ms)."""
        self.pending += nbytes
        if self.pending >= SLICE_BYTES:
            self.release()

    def release(self) -> None:
        self.pending = 0
        if not self.enabled:
            return
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        for start, end in self._unchanged_mappings():
            if libc.madvise(start, end - start, self.MADV_DONTNEED) == 0:
                self.released += 1


def _source(tensor: Any, ir: Any) -> tuple[Any, Any]:
    """(the weight's data, the numpy dtype the builder gives it or None): a torch tensor or a numpy array.

    The data is often a transposed view of the checkpoint's tensor. Where the builder casts it
    (a bf16 checkpoint into an fp32 graph: ``make_initializer(..., to=FLOAT)``, a LazyTensor
    whose thunk casts the whole weight), the checkpoint's tensor comes back uncast with the
    dtype of the cast, so that ``_contiguous`` casts one slice at a time: the tied output layer
    of a Phi-4-mini shape is 2.4 GB in fp32, 1.2 GB as stored. A cast is elementwise, so the
    slices hold the bytes the builder's cast would.
    """
    if isinstance(tensor, ir.LazyTensor):
        uncast = _uncast(tensor.raw)
        if uncast is not None:
            return uncast
        tensor = tensor.raw()  # the thunk that makes the tensor (a cast, when the builder casts)
    raw = getattr(tensor, "raw", None)
    if _is_torch(raw):
        return raw.detach(), None  # the builder may hold tensors that require grad
    return tensor.numpy(), None


def _is_torch(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def _uncast(thunk: Any) -> tuple[Any, Any] | None:
    """(tensor, numpy dtype) the builder's casting thunk would cast, or None if it is another thunk.

    The 0.18 builder's ``make_initializer`` closes over ``tensor`` and ``torch_dtype``.
    """
    code, cells = getattr(thunk, "__code__", None), getattr(thunk, "__closure__", None) or ()
    if code is None or len(code.co_freevars) != len(cells):
        return None
    free = dict(zip(code.co_freevars, cells, strict=True))
    if "tensor" not in free or "torch_dtype" not in free:
        return None
    try:
        tensor, torch_dtype = free["tensor"].cell_contents, free["torch_dtype"].cell_contents
    except ValueError:  # an empty cell
        return None
    if not _is_torch(tensor):
        return None
    import torch

    if not isinstance(torch_dtype, torch.dtype) or not torch_dtype.is_floating_point or torch_dtype == torch.bfloat16:
        return None  # numpy has no bfloat16: the builder's own cast
    return tensor.detach(), torch.empty(0, dtype=torch_dtype).numpy().dtype


def _contiguous(source: Any, np: Any, columns: slice | None = None, dtype: Any = None) -> Any:
    """The weight (or its ``columns``) as one C-contiguous array, cast to ``dtype`` when given.

    The builder's MatMul weights are transposed views of the checkpoint's tensors, and
    ONNX Runtime's block quantizer reads the raw buffer, not the strides. torch copies the
    view into a numpy array (its copy is several times faster than numpy's for large
    tables; into numpy memory, freed as soon as the weight is quantized), casting as it copies.
    """
    part = source if columns is None else source[:, columns]
    if isinstance(part, np.ndarray):
        return np.ascontiguousarray(part, dtype=dtype)
    import torch

    out = np.empty((0,), dtype=dtype) if dtype is not None else part[:0].numpy()
    if part.is_contiguous() and part.dtype == torch.from_numpy(out).dtype:
        return part.numpy()
    out = np.empty(tuple(part.shape), dtype=out.dtype)
    torch.from_numpy(out).copy_(part)
    return out


#: Bytes of float weight made contiguous at a time: a large MatMul weight is quantized in slices of columns.
SLICE_BYTES = 64 << 20


def _matmul_nbits(
    ir: Any, quantizer: Any, node: Any, weight: Any, bits: int, initializer: Any, checkpoint: CheckpointPages
) -> Any:
    """MatMul -> MatMulNBits as ``DefaultWeightOnlyQuantizer.quantize_matmul`` writes it (QOperator).

    The quantizer works on each output column (N) alone, in blocks along K, and writes its
    results column by column: a weight quantized in slices of columns, joined along N, is
    the same bytes. Slicing bounds the contiguous float copy (and, with ``checkpoint``, the
    checkpoint's pages read) to SLICE_BYTES instead of the whole weight (the tied output
    layer of Qwen2.5-0.5B: 519 MiB).
    """
    config = quantizer.config
    source, dtype = _source(weight.const_value, ir)
    rows, cols = source.shape
    packed, scales, zero_points = _block_quant_by_columns(quantizer, source, dtype, checkpoint)
    del source
    inputs = [
        node.inputs[0],
        initializer(f"{weight.name}_Q{bits}", ir.Tensor(packed, name=f"{weight.name}_Q{bits}")),
        initializer(f"{weight.name}_scales", ir.Tensor(scales, name=f"{weight.name}_scales")),
    ]
    if not config.is_symmetric:
        zp_name = f"{weight.name}_zero_points"
        inputs.append(initializer(zp_name, ir.Tensor(zero_points, name=zp_name)))
    attributes: dict[str, int] = {"K": rows, "N": cols, "bits": bits, "block_size": config.block_size}
    if config.accuracy_level:
        attributes["accuracy_level"] = config.accuracy_level
    return ir.node(
        "MatMulNBits",
        inputs,
        dict(sorted(attributes.items())),
        domain="com.microsoft",
        name=f"{node.name}_Q{bits}" if node.name else "",
        num_outputs=1,
    )


def _block_quant_by_columns(quantizer: Any, source: Any, dtype: Any, checkpoint: CheckpointPages) -> tuple:
    """``quantizer.qbits_block_quant`` of a ``[K, N]`` weight, SLICE_BYTES of columns at a time: same bytes."""
    import numpy as np

    rows, cols = source.shape
    step = max(1, SLICE_BYTES // (4 * rows))
    parts = []
    for start in range(0, cols, step):
        part = _contiguous(source, np, columns=slice(start, min(cols, start + step)), dtype=dtype)
        parts.append(quantizer.qbits_block_quant(part))
        checkpoint.read(part.nbytes)
        del part
    if len(parts) == 1:
        return parts[0]
    return tuple(np.concatenate(pieces, axis=0) for pieces in zip(*parts, strict=True))


def _gather_block_quantized_8bits(
    ir: Any, quantizer: Any, node: Any, weight: Any, initializer: Any, checkpoint: CheckpointPages
) -> Any:
    """Gather -> GatherBlockQuantized at 8 bits, its table laid out as an int8 MatMulNBits weight's.

    An embedding table ``[vocab, hidden]`` is the transpose of a MatMul weight ``[K=hidden,
    N=vocab]``: quantized as one (the same ONNX Runtime function, block by block along hidden), each
    row becomes ``hidden`` uint8 codes (the int8 value + 128 when symmetric: GatherBlockQuantized's
    default zero point at 8 bits) and one scale per block, which is what GatherBlockQuantized reads
    with ``quantize_axis`` 1. This is the layout of the tied int8 table the embedding shares with the
    output layer (``share_int8_embedding``); the block padding of a row is cut off.
    """
    import numpy as np

    config = quantizer.config
    source, dtype = _source(weight.const_value, ir)
    vocab, hidden = source.shape
    packed, scales, zero_points = _block_quant_by_columns(quantizer, source.T, dtype, checkpoint)
    del source
    codes = np.ascontiguousarray(packed.reshape(vocab, -1)[:, :hidden])
    del packed
    inputs = [
        initializer(f"{weight.name}_Q8", ir.Tensor(codes, name=f"{weight.name}_Q8")),
        node.inputs[1],
        initializer(f"{weight.name}_scales", ir.Tensor(scales, name=f"{weight.name}_scales")),
    ]
    if not config.is_symmetric:
        inputs.append(
            initializer(f"{weight.name}_zero_points", ir.Tensor(zero_points, name=f"{weight.name}_zero_points"))
        )
    attributes = {"bits": 8, "block_size": config.block_size, "gather_axis": 0, "quantize_axis": 1}
    return _gather_node(ir, node, inputs, attributes, "_Q8")


def _gather_block_quantized(ir: Any, quantizer: Any, node: Any, weight: Any, array: Any, initializer: Any) -> Any:
    """Gather -> GatherBlockQuantized as ``DefaultWeightOnlyQuantizer.quantize_gather`` writes it."""
    config = quantizer.config
    rank = array.ndim
    axis = (config.quant_axes.get("Gather", 1) + rank) % rank
    data, scales, zero_points = quantizer.quantize_ndarray(array, axis, config.block_size, config.is_symmetric)
    dtype = ir.DataType.INT4 if config.is_symmetric else ir.DataType.UINT4
    inputs = [
        initializer(f"{weight.name}_Q4", ir.PackedTensor(data, dtype, shape=array.shape, name=f"{weight.name}_Q4")),
        node.inputs[1],
        initializer(f"{weight.name}_scales", ir.Tensor(scales, name=f"{weight.name}_scales")),
    ]
    if not config.is_symmetric:
        zp = ir.PackedTensor(zero_points, dtype, shape=scales.shape, name=f"{weight.name}_zero_points")
        inputs.append(initializer(f"{weight.name}_zero_points", zp))
    attributes = {"block_size": config.block_size, "gather_axis": _gather_axis(node), "quantize_axis": axis}
    return _gather_node(ir, node, inputs, attributes, "_Q4")


def _gather_node(ir: Any, node: Any, inputs: list, attributes: dict[str, int], suffix: str) -> Any:
    """The GatherBlockQuantized node that replaces ``node`` (named after it, as the quantizer names it)."""
    name = f"{node.name}{suffix}" if node.name else ""
    return ir.node("GatherBlockQuantized", inputs, attributes, domain="com.microsoft", name=name, num_outputs=1)


# ------------------------------------------------------------------ int8 shared embedding
def _int8_dtypes() -> tuple[Any, ...]:
    import onnx_ir as ir

    return (ir.DataType.INT8, ir.DataType.UINT8)


def _int8_table_names(builder: Any) -> bool:
    """Whether the output layer's table is MatMulNBits' default symmetric int8 (named ``*_Q8``)."""
    last = builder.matmul_mixed_precision.get("last_matmul")
    int8_build = builder.onnx_dtype in _int8_dtypes()
    return (
        (last in ("int8", "uint8") or (last is None and int8_build))
        and builder.quant_attrs["is_symmetric"]
        and not builder.quant_attrs.get("use_qdq")
        and getattr(builder, "quantization_algo", "default") == "default"
        and builder.quant_type is None  # a pre-quantized checkpoint keeps the builder's layout
        and getattr(getattr(getattr(builder, "weights", None), "lm_head", None), "qweight", None) is None
    )


def _shares_int8(builder: Any) -> bool:
    return (
        builder.onnx_dtype in _int8_dtypes()
        and bool(builder.extra_options.get("shared_embeddings", False))
        and not builder.exclude_embeds
        and not builder.exclude_lm_head
        and builder.is_lm_head_quantized()
        and _int8_table_names(builder)
    )


def share_int8_embedding(original_init: Any, original_names: Any, applied: list[str]) -> tuple[Any, Any]:
    """Replacements for ``make_tied_embeddings_init`` and ``make_tied_quantized_embedding_input_names``.

    The second also fixes int4 builds whose output layer is int8
    (``matmul_mixed_precision=last_matmul:int8``): the 0.18 builder names the shared table
    ``lm_head.MatMul.weight_Q8G32`` (the rtn method's name) where its default quantizer writes
    ``lm_head.MatMul.weight_Q8``, and the model does not load. What a build used is
    appended to ``applied`` (slmk's log line).
    """

    def make_tied_embeddings_init(self: Any, config: Any) -> None:
        original_init(self, config)
        if not self.tied_quantized_embeddings and _shares_int8(self):
            self.tied_quantized_embeddings = True
            self.tied_unquantized_embeddings = False
            applied.append("int8 embedding shared with the output layer")

    def make_tied_quantized_embedding_input_names(self: Any) -> tuple[int, str, str, str]:
        if _int8_table_names(self):
            # MatMulNBits' symmetric int8 table: uint8 offset by 128 (GatherBlockQuantized's
            # default zero point at 8 bits), scales per block, rows padded to whole blocks.
            if self.onnx_dtype not in _int8_dtypes():
                applied.append("the int8 output layer's table named as the quantizer writes it")
            return 8, "lm_head.MatMul.weight_Q8", "lm_head.MatMul.weight_scales", ""
        return original_names(self)

    return make_tied_embeddings_init, make_tied_quantized_embedding_input_names


# ------------------------------------------------------------------ the shared table at run time
def gather_rows_from_file(build_dir: Path) -> int:
    """Let the embedding read its rows of a shared quantized table straight from the data file.

    A shared table is the output layer's MatMulNBits weight ``[N, blocks, blob]``, and the
    embedding's GatherBlockQuantized reads it through a Reshape to ``[N, K]``. ONNX Runtime
    folds that Reshape into a new in-memory initializer at load, and prepacks the MatMulNBits
    weight into its own layout too: the table is held twice (measured on a Qwen2.5-0.5B shape:
    130 MiB of 988 MiB peak at int8, docs/benchmarks.md). Here the Gather gets its own
    initializer with the ``[N, K]`` shape that points at the same bytes of the data file
    (same location, offset and length), and the Reshape goes: ONNX Runtime memory-maps that
    initializer and only the rows looked up are read. The files' bytes are unchanged.

    Returns how many tables now read from the file (0: nothing to do); rewrites model.onnx.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    path = Path(build_dir) / "model.onnx"
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    aliased, replaced = 0, []
    for gather in [n for n in graph.node if n.op_type == "GatherBlockQuantized"]:
        reshape = producers.get(gather.input[0])
        if reshape is None or reshape.op_type != "Reshape" or reshape.input[0] not in initializers:
            continue
        table = initializers[reshape.input[0]]
        shape = _constant(reshape.input[1], initializers, producers, numpy_helper)
        location = {entry.key: entry.value for entry in table.external_data}
        if shape is None or table.data_location != onnx.TensorProto.EXTERNAL or "length" not in location:
            continue
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(table.data_type).itemsize
        if any(d <= 0 for d in shape) or int(np.prod(shape)) * itemsize != int(location["length"]):
            continue  # a -1 or 0 in the shape, or not a plain view of the same bytes
        rows = onnx.TensorProto(name=f"{table.name}_rows", data_type=table.data_type, dims=shape)
        rows.data_location = onnx.TensorProto.EXTERNAL
        rows.external_data.extend(table.external_data)
        graph.initializer.append(rows)
        gather.input[0] = rows.name
        replaced.append(reshape)
        aliased += 1
    if not aliased:
        return 0
    _drop_unread(graph, replaced)
    temporary = path.with_name(path.name + ".tmp")
    onnx.save(model, str(temporary))
    temporary.replace(path)
    return aliased


def _constant(name: str, initializers: dict, producers: dict, numpy_helper: Any) -> list[int] | None:
    """The value of a constant int tensor (an initializer or a Constant node's), or None."""
    if name in initializers:
        return [int(v) for v in numpy_helper.to_array(initializers[name]).reshape(-1)]
    node = producers.get(name)
    if node is not None and node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
        return [int(v) for v in numpy_helper.to_array(node.attribute[0].t).reshape(-1)]
    return None


def _drop_unread(graph: Any, candidates: list) -> None:
    """Remove the replaced Reshapes, then their shape constants, if nothing else reads them."""

    def read() -> set[str]:
        return {name for node in graph.node for name in node.input} | {o.name for o in graph.output}

    shapes = {node.input[1] for node in candidates}
    for node in candidates:
        if node.output[0] not in read():
            graph.node.remove(node)
    still_read = read()
    for node in [n for n in graph.node if n.op_type == "Constant" and n.output[0] in shapes]:
        if node.output[0] not in still_read:
            graph.node.remove(node)
    for tensor in [t for t in graph.initializer if t.name in shapes and t.name not in still_read]:
        graph.initializer.remove(tensor)
