"""The planner and the step runner are the built-in plugin slmk_build, behind ``slmk_build_pipelines``:
the kernel asks the registry for the pipeline with the highest priority, says in one line when
there is none, and another plugin's pipeline replaces the built-in one."""

from __future__ import annotations

import json

import pytest
import slmk_build
import slmk_families
import slmk_ortgenai
import slmk_system

from slmk import app
from slmk.api import BuildPipeline, Plan, PlannedStep, SlmkError, hookimpl
from slmk.cli.build import inspect_model
from slmk.testing import make_registry

TOOLS = (slmk_system, slmk_ortgenai, slmk_families)


def test_the_built_in_pipeline_plans_as_the_converters_declare(tiny_model_dir):
    registry = make_registry(*TOOLS, slmk_build)
    assert registry.default_name("slmk_build_pipelines") == "cached-steps"
    plan = app.convert(tiny_model_dir, precision="int4", plan_only=True, registry=registry)
    assert plan.shape == "direct" and [step.tool for step in plan.steps] == ["ortgenai-builder"]


def test_without_a_pipeline_convert_is_one_line_naming_the_missing_plugin(tiny_model_dir, tmp_path):
    registry = make_registry(*TOOLS)
    with pytest.raises(SlmkError) as caught:
        app.convert(tiny_model_dir, tmp_path / "out", precision="int4", registry=registry)
    line = caught.value.one_line()
    assert "no build pipeline is installed" in line and "slmk_build" in line and "\n" not in line
    assert not (tmp_path / "out").exists()


def test_without_a_pipeline_inspect_still_answers_and_says_why_nothing_builds(tiny_model_dir):
    matrix = inspect_model(tiny_model_dir, make_registry(*TOOLS))["matrix"]
    cpu_int4 = next(row for row in matrix if (row["execution_provider"], row["precision"]) == ("cpu", "int4"))
    assert cpu_int4["buildable"] is False and cpu_int4["note"].startswith("no build pipeline is installed")


def test_slmk_convert_with_the_build_plugin_disabled_is_one_error_line(run_slmk, tiny_model_dir):
    result = run_slmk("convert", str(tiny_model_dir), "--plan", env={"SLMK_DISABLE_PLUGINS": "build"}, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode not in (0, 3) and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: no build pipeline is installed") and "Traceback" not in result.stderr


class ReplacingPipeline:
    """A third party's pipeline with a higher priority than the built-in one."""

    @hookimpl
    def slmk_build_pipelines(self):
        def plan(registry, info, ep, request):
            step = PlannedStep("convert", "elsewhere", "remote", request.precision, "hf", "ortgenai")
            return Plan(request.precision, ep.name, "remote", (step,), "built on another machine")

        def run(registry, info, plan, request, check):
            raise SlmkError("the build server is not reachable", hint="a test pipeline")

        yield BuildPipeline(name="remote", description="a test pipeline", plan=plan, run=run, priority=10)


def test_the_pipeline_with_the_highest_priority_plans_and_runs(tiny_model_dir, tmp_path):
    registry = make_registry(*TOOLS, slmk_build, ReplacingPipeline())
    plan = app.convert(tiny_model_dir, precision="int8", plan_only=True, registry=registry)
    assert json.loads(json.dumps(plan.as_dict()))["shape"] == "remote"
    with pytest.raises(SlmkError, match="the build server is not reachable"):
        app.convert(tiny_model_dir, tmp_path / "out", precision="int8", verify=False, registry=registry)


@pytest.mark.parametrize(
    ("error", "full"),
    [
        (OSError(28, "No space left on device"), True),
        (OSError("32768 requested and 29952 written"), True),  # numpy's tofile: a short write, no errno
        (OSError("32768 requested and 32768 written"), False),
        (OSError(13, "Permission denied"), False),
        (ValueError("32768 requested and 29952 written"), False),
    ],
)
def test_a_full_disk_is_recognised_through_the_error_chain(error, full):
    """The step runner names a full disk in one line; the model builder's tensor writer reports it
    as a short write (tests/test_hardening_install.py fills a real tmpfs)."""
    from slmk_build.pipeline import _out_of_space

    try:
        try:
            raise error
        except Exception as inner:
            raise RuntimeError("the model builder failed") from inner
    except RuntimeError as wrapped:
        assert _out_of_space(wrapped) is full
