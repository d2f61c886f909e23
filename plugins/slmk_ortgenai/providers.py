"""slmk's execution providers in onnxruntime-genai's words (the record holds slmk's name only)."""

from __future__ import annotations

from slmk.api import ExecutionProvider

#: The model builder's ``-e`` value for each slmk execution provider.
BUILDER_EP = {"cpu": "cpu", "cuda": "cuda", "dml": "dml", "webgpu": "webgpu"}

#: ``og.Config.append_provider``'s name; None: onnxruntime's default CPU provider, appended by no call.
GENAI_PROVIDER: dict[str, str | None] = {"cpu": None, "cuda": "cuda", "dml": "dml", "webgpu": "webgpu"}


def builder_ep(ep: ExecutionProvider) -> str:
    """The model builder's ``-e`` for ``ep``; a one-line UsageError when the builder has none."""
    return ep.tool_name(BUILDER_EP, "the onnxruntime-genai model builder")


def genai_provider(ep: ExecutionProvider) -> str | None:
    """onnxruntime-genai's provider for ``ep`` (None: the default CPU provider); a UsageError when it has none."""
    return ep.tool_name(GENAI_PROVIDER, "onnxruntime-genai")
