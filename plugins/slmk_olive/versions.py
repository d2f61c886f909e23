"""Installed versions of Olive and the tools it drives, read from package metadata
(never by importing them: ``slmk doctor`` and ``slmk plugins`` stay fast)."""

from __future__ import annotations

from slmk.api.files import installed_version as installed

#: Distributions that ship ``onnxruntime_genai`` (one per hardware flavour).
GENAI_DISTRIBUTIONS = (
    "onnxruntime-genai",
    "onnxruntime-genai-cuda",
    "onnxruntime-genai-directml",
    "onnxruntime-genai-winml",
    "onnxruntime-genai-core",
)


def version_tuple(text: str | None) -> tuple[int, ...]:
    """``"0.13.0"`` -> ``(0, 13, 0)``; pre-release tails are ignored ("0.16.0rc1" -> (0, 16, 0))."""
    parts = []
    for piece in (text or "").split(".")[:3]:
        digits = ""
        for char in piece:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def model_builder_pass_broken(olive: str | None, genai: str | None) -> bool:
    """olive-ai 0.13's ModelBuilder pass imports ``onnxruntime_genai.models.quantized_model``,
    a module onnxruntime-genai 0.16 removed: every ModelBuilder pass then fails."""
    if not olive or not genai:
        return False
    return version_tuple(olive)[:2] <= (0, 13) and version_tuple(genai)[:2] >= (0, 16)


def model_builder_fix(olive: str | None, genai: str | None) -> str:
    """The one fix text for the olive-ai 0.13 x onnxruntime-genai >= 0.16 trap (doctor and failed passes)."""
    return (
        f"olive-ai {olive}'s ModelBuilder pass does not work with onnxruntime-genai {genai} (>= 0.16): "
        "let slmk convert instead, `slmk convert MODEL -p int4 --via olive` (Olive quantizes, the ONNX Runtime "
        "GenAI builder converts; `slmk olive-config MODEL` writes that Olive workflow), or run the workflow where "
        "onnxruntime-genai<0.16 is installed (foundry-local-sdk 2.2.1 needs 0.18.0, so in another environment)"
    )


def olive_tool_versions() -> dict[str, str]:
    """What changes Olive's quantized weights: part of the step cache key."""
    found = {
        "olive-ai": installed("olive-ai"),
        "torch": installed("torch"),
        "transformers": installed("transformers"),
    }
    return {name: version or "absent" for name, version in found.items()}


def workflow_tool_versions() -> dict[str, str]:
    """A user's workflow may also run onnxruntime and the genai builder."""
    return {
        **olive_tool_versions(),
        "onnxruntime": installed("onnxruntime") or "absent",
        "onnxruntime-genai": installed(*GENAI_DISTRIBUTIONS) or "absent",
    }
