"""What a build is to the kernel and its front ends: the plan, the result, the check's verdict line.

A build pipeline plugin (``slmk_build_pipelines``; the built-in one is ``slmk_build``) makes
these; the CLI prints them (``--plan``, ``--json``), model sources return them, and
``inspect``, ``list`` and ``convert`` read a build's verdict through ``verification_summary``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError
from .records import PRECISIONS, ExecutionProvider

#: The file a build records how it was made in (precision, EP, source, plan, steps, verification).
BUILD_INFO = "slmk_build.json"

#: A build check's verdicts (slmk_build.json ``verification.status``), as ``verification_summary`` reads them.
STATUS_VERIFIED = "verified"  # the source check's exact precisions: tokens equal to transformers'
STATUS_MEASURED = "measured"  # int8/int4: agreement and cosine recorded
STATUS_SKIPPED = "skipped"  # --no-verify
STATUS_NOT_VERIFIED = "not verified"  # could not run here, or no check is installed; reason says why


@dataclass(frozen=True)
class PlannedStep:
    """One step of a plan: convert or quantize, with which tool, to which precision and format."""

    kind: str  # "convert" or "quantize"
    tool: str  # the converter or quantizer name
    plugin: str  # the plugin that provides it
    precision: str  # the precision this step produces
    input_format: str
    output_format: str
    options: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """The step as one line for progress and `--plan`."""
        return f"{self.kind} with {self.tool} ({self.plugin}) -> {self.precision} {self.output_format}"


@dataclass(frozen=True)
class Plan:
    """The steps that take a model to a precision on an EP, and why they were chosen."""

    precision: str
    execution_provider: str
    shape: str
    steps: tuple[PlannedStep, ...]
    why: str

    def as_dict(self) -> dict[str, Any]:
        """The plan as JSON-ready data (`slmk convert --plan --json`)."""
        return {
            "precision": self.precision,
            "execution_provider": self.execution_provider,
            "shape": self.shape,
            "why": self.why,
            "steps": [asdict(step) for step in self.steps],
        }


@dataclass
class StepRun:
    """One step of a build as it happened: ran or cached, how long, where."""

    kind: str
    tool: str
    precision: str
    status: str  # "ran" or "cached"
    seconds: float
    key: str
    path: str


@dataclass
class BuildResult:
    """A finished build: its folder, plan, steps and files."""

    output: Path
    plan: Plan
    steps: list[StepRun] = field(default_factory=list)
    files: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def verification(self) -> dict[str, Any] | None:
        """The build's check against its source model (slmk_build.json ``verification``)."""
        try:
            return json.loads((self.output / BUILD_INFO).read_text(encoding="utf-8")).get("verification")
        except (OSError, ValueError):
            return None

    @property
    def size_bytes(self) -> int:
        """Bytes of every file in the build."""
        return sum(self.files.values())

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data (`slmk convert --json`)."""
        return {
            "output": str(self.output),
            "plan": self.plan.as_dict(),
            "steps": [asdict(step) for step in self.steps],
            "files": self.files,
            "size_bytes": self.size_bytes,
            "seconds": round(self.seconds, 3),
            "verification": self.verification,
        }


def check_precision(ep: ExecutionProvider, precision: str) -> None:
    """Refuse a precision the EP cannot build or cannot run, naming the alternatives."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}", hint=f"choose one of {', '.join(PRECISIONS)}")
    runnable = ", ".join(p for p in ep.run_precisions)
    if precision not in ep.build_precisions:
        raise UsageError(
            f"{precision} cannot be built for the {ep.name} execution provider", hint=f"{ep.name} runs {runnable}"
        )
    if precision not in ep.run_precisions:
        raise UsageError(
            f"{precision} builds for {ep.name} but does not load there",
            hint=f"use one of {runnable} on {ep.name}, or another execution provider",
        )


def verification_summary(verification: Mapping[str, Any] | None) -> str:
    """One line for inspect, list and convert: what the build check found, or why there was none."""
    if not verification:
        return "not verified: built before slmk verified builds"
    status = verification.get("status")
    if verification.get("summary"):  # a check that words its own verdict
        return f"{status}: {verification['summary']}"
    if status == STATUS_VERIFIED:
        return (
            f"verified: greedy tokens equal to transformers' on {verification.get('prompts')} prompts "
            f"({verification.get('positions')} tokens), max logit difference {verification.get('max_logit_diff')}"
        )
    if status == STATUS_MEASURED:
        return (
            f"measured against transformers: token agreement {verification.get('token_agreement')}, "
            f"logit cosine {verification.get('logit_cosine')} on {verification.get('prompts')} prompts"
        )
    if status == STATUS_SKIPPED:
        return "skipped (--no-verify): not compared with the source model"
    return f"not verified: {verification.get('reason') or status}"
