"""The order in which ONNX Runtime prepacks a build's quantized weights, and what it costs in peak memory.

At load, ONNX Runtime's CPU provider prepacks every MatMulNBits weight into MLAS's layout
(anonymous memory) node by node, in the order of model.onnx's node list, and releases the
memory-mapped original of each weight once it is packed. While a weight is packed, its file
pages are resident too, on top of every weight packed before it. The builder writes the
output layer last, and it is the largest weight (vocabulary x hidden: 65 MiB at int4, 130 MiB
at int8 on a Qwen2.5-0.5B shape), so the load peaked at all packed weights plus the output
layer's file pages: 552 -> 473 MiB at int4, 853 -> 711 MiB at int8 when the output layer is
packed first instead (docs/benchmarks.md, "int8 memory and prefill").

ONNX Runtime resolves the execution order from the edges itself, so the node list may start
with the output layer; the ONNX checker, which wants the list topologically sorted, would
refuse such a file (nothing in slmk or onnxruntime-genai / Foundry Local runs it on a build).
"""

from __future__ import annotations

from pathlib import Path


def output_layer_first(build_dir: Path) -> str | None:
    """Move the largest MatMulNBits node (the output layer) to the front of model.onnx's node list.

    Returns the node's name, or None when there is nothing to move (no MatMulNBits, or it is
    first already). model.onnx is rewritten atomically; the data file is not touched.
    """
    import onnx

    path = Path(build_dir) / "model.onnx"
    model = onnx.load(str(path), load_external_data=False)
    nodes = list(model.graph.node)
    packed = [node for node in nodes if node.op_type == "MatMulNBits" and node.domain == "com.microsoft"]
    if not packed:
        return None
    largest = max(packed, key=_weight_count)
    if nodes[0] is largest:
        return None
    del model.graph.node[:]
    model.graph.node.extend([largest, *(node for node in nodes if node is not largest)])
    temporary = path.with_name(path.name + ".tmp")
    onnx.save(model, str(temporary))
    temporary.replace(path)
    return largest.name


def _weight_count(node) -> int:
    attributes = {attribute.name: attribute.i for attribute in node.attribute}
    return attributes.get("N", 0) * attributes.get("K", 0)
