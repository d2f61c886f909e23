"""How ``slmk convert`` builds: plan the steps, then run each one cached by its inputs.

The planner (``planner``) picks the steps that take a model to a precision on an
execution provider from what the installed converters and quantizers declare: one
converter, a quantizer then a converter, or a converter then a quantizer. The step
runner (``pipeline``) runs them into the step cache, each step reused while its inputs,
options and tool versions are the same, and assembles the build beside its destination.
A plugin of its own: the kernel only asks the registry for the build pipeline with the
highest priority, so another one (a remote builder, a different cache) can replace it.
"""

from __future__ import annotations

from slmk.api import BuildPipeline, hookimpl

from .pipeline import run_plan
from .planner import make_plan


@hookimpl
def slmk_build_pipelines():
    yield BuildPipeline(
        name="cached-steps",
        description="plans convert/quantize steps from the installed converters and quantizers; "
        "runs each cached by its inputs, options and tool versions",
        plan=make_plan,
        run=run_plan,
    )
