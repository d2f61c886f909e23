"""ONNX-level quantizers: weight-only MatMulNBits on an fp32 ONNX Runtime GenAI build.

The planner uses them after an fp32 conversion (convert-quantize) when asked for by
name (``--via ortquant``, ``--via ortquant-int8``) or for ``--algorithm hqq``; the
model builder's own int4/int8 stays the default path. Nothing heavy is imported
at module level.
"""

from __future__ import annotations

from slmk.api import FORMAT_ORTGENAI, Quantizer, StepRequest, hookimpl


def _int4_rtn(request: StepRequest) -> None:
    from .quantize import quantize

    quantize(request, bits=4, algorithm="rtn")


def _int4_hqq(request: StepRequest) -> None:
    from .quantize import quantize

    quantize(request, bits=4, algorithm="hqq")


def _int8_rtn(request: StepRequest) -> None:
    from .quantize import quantize

    quantize(request, bits=8, algorithm="rtn")


@hookimpl
def slmk_quantizers():
    from .quantize import OPTIONS, tool_versions

    yield Quantizer(
        name="ortquant-int4",
        description="onnxruntime MatMulNBits 4-bit round-to-nearest on an fp32 ONNX build",
        stage=FORMAT_ORTGENAI,
        precisions=("int4",),
        quantize=_int4_rtn,
        algorithms=("rtn",),
        tool_versions=tool_versions,
        options=OPTIONS,
        priority=10,
    )
    yield Quantizer(
        name="ortquant-hqq",
        description="onnxruntime MatMulNBits 4-bit HQQ (half-quadratic, no data) on an fp32 ONNX build",
        stage=FORMAT_ORTGENAI,
        precisions=("int4",),
        quantize=_int4_hqq,
        algorithms=("hqq",),
        tool_versions=tool_versions,
        options=OPTIONS,
        priority=5,
    )
    yield Quantizer(
        name="ortquant-int8",
        description="onnxruntime MatMulNBits 8-bit round-to-nearest on an fp32 ONNX build",
        stage=FORMAT_ORTGENAI,
        precisions=("int8",),
        quantize=_int8_rtn,
        algorithms=("rtn",),
        tool_versions=tool_versions,
        options=OPTIONS,
        priority=10,
    )
