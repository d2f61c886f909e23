"""slmk's execution providers in Olive's words (the record holds slmk's name only)."""

from __future__ import annotations

from slmk.api import ExecutionProvider

#: onnxruntime's provider name, which Olive's accelerators list.
ORT_PROVIDER = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "dml": "DmlExecutionProvider",
    "webgpu": "WebGpuExecutionProvider",
}

#: Olive's accelerator device for it.
OLIVE_DEVICE = {"cpu": "cpu", "cuda": "gpu", "dml": "gpu", "webgpu": "gpu"}

#: The ONNX Runtime GenAI model builder's ``-e``, for the command line `slmk olive-config` suggests.
BUILDER_EP = {"cpu": "cpu", "cuda": "cuda", "dml": "dml", "webgpu": "webgpu"}


def ort_provider(ep: ExecutionProvider) -> str:
    """onnxruntime's name for ``ep``; a one-line UsageError when Olive has none."""
    return ep.tool_name(ORT_PROVIDER, "Olive")


def olive_device(ep: ExecutionProvider) -> str:
    """Olive's accelerator device for ``ep``; a one-line UsageError when Olive has none."""
    return ep.tool_name(OLIVE_DEVICE, "Olive")


def builder_ep(ep: ExecutionProvider) -> str:
    """The model builder's ``-e`` for ``ep``."""
    return ep.tool_name(BUILDER_EP, "the onnxruntime-genai model builder")
