"""``slmk doctor`` checks for Olive: package metadata and environment only, never ``import olive``."""

from __future__ import annotations

import os
from collections.abc import Iterator

from slmk.api import ProbeResult

from .versions import GENAI_DISTRIBUTIONS, installed, model_builder_fix, model_builder_pass_broken, version_tuple


def check() -> Iterator[ProbeResult]:
    olive = installed("olive-ai")
    if olive is None:
        yield ProbeResult(
            "olive-ai",
            "ok",
            "not installed (optional: --via olive, --olive-config and "
            "`slmk olive-config` need it; pip install 'slmk[olive]')",
        )
        return
    yield ProbeResult("olive-ai", "ok", f"olive-ai {olive}", data={"version": olive})
    genai = installed(*GENAI_DISTRIBUTIONS)
    if model_builder_pass_broken(olive, genai):
        yield ProbeResult(
            "olive-model-builder",
            "warn",
            f"olive-ai {olive}'s ModelBuilder pass fails with onnxruntime-genai {genai}: it imports "
            "onnxruntime_genai.models.quantized_model, which onnxruntime-genai 0.16 removed "
            "(`olive auto-opt --use_model_builder`, `olive optimize` and workflows with a ModelBuilder pass "
            "stop there)",
            fix=model_builder_fix(olive, genai),
            data={"olive-ai": olive, "onnxruntime-genai": genai},
        )
    if installed("requests") is None:
        yield ProbeResult(
            "olive-requests",
            "fail",
            f"olive-ai {olive} imports requests but does not declare it",
            fix="pip install requests (pip install 'slmk[olive]' includes it)",
        )
    yield _telemetry(olive)


def _telemetry(olive: str) -> ProbeResult:
    setting = os.environ.get("OLIVE_DISABLE_TELEMETRY")
    if setting not in (None, "1"):
        return ProbeResult(
            "olive-telemetry",
            "warn",
            f"Olive telemetry is on (OLIVE_DISABLE_TELEMETRY={setting}); offline, each Olive run "
            "stalls 10-20 s trying to send it",
            fix="unset OLIVE_DISABLE_TELEMETRY (slmk turns it off) or export OLIVE_DISABLE_TELEMETRY=1",
        )
    detail = "off for the Olive runs slmk makes"
    if version_tuple(olive)[:2] <= (0, 13):
        # Olive 0.13 logs its heartbeat before it reads OLIVE_DISABLE_TELEMETRY; it skips it in CI.
        detail += (
            f"; olive-ai {olive} still logs its heartbeat when OLIVE_DISABLE_TELEMETRY=1 (written under "
            "~/.cache/Microsoft/DeveloperTools, ~10 s stall at exit offline): for your own `olive` "
            "commands set CI=1 as well"
        )
    return ProbeResult("olive-telemetry", "ok", detail)
