"""The plugin manager: discovery through real entry points, isolation, conflicts."""

from __future__ import annotations

import json
import textwrap

import pytest

from slmk import hookimpl
from slmk.errors import SlmkError
from slmk.records import ExecutionProvider, Usability
from slmk.testing import make_registry


def _ep(name: str) -> ExecutionProvider:
    return ExecutionProvider(
        name=name,
        description="test",
        ort_provider="X",
        genai_provider=None,
        builder_ep="cpu",
        olive_device="cpu",
        foundry_suffix=f"{name}-test",
        build_precisions=("int4",),
        run_precisions=("int4",),
        probe=lambda: Usability(True, "always"),
    )


class ProvidesAlpha:
    @hookimpl
    def slmk_execution_providers(self):
        yield _ep("alpha")


class AlsoProvidesAlpha:
    @hookimpl
    def slmk_execution_providers(self):
        yield _ep("alpha")


class RaisesInHook:
    @hookimpl
    def slmk_execution_providers(self):
        raise RuntimeError("driver exploded")


class ReturnsWrongType:
    @hookimpl
    def slmk_execution_providers(self):
        yield "not a record"


def test_make_registry_holds_only_named_plugins():
    registry = make_registry(ProvidesAlpha())
    assert list(registry.execution_providers) == ["alpha"]
    assert registry.owner("slmk_execution_providers", "alpha") == "ProvidesAlpha"


def test_a_name_conflict_keeps_the_first_and_reports_the_second_naming_both():
    registry = make_registry(ProvidesAlpha(), AlsoProvidesAlpha())
    assert list(registry.execution_providers) == ["alpha"]
    assert registry.owner("slmk_execution_providers", "alpha") == "ProvidesAlpha"
    errors = {info.name: info.errors for info in registry.plugin_infos()}
    assert errors["ProvidesAlpha"] == []
    (message,) = errors["AlsoProvidesAlpha"]
    assert "'alpha'" in message and "'ProvidesAlpha'" in message and "SLMK_DISABLE_PLUGINS" in message


def test_plugin_raising_in_hook_is_reported_and_others_still_work():
    registry = make_registry(RaisesInHook(), ProvidesAlpha(), ReturnsWrongType())
    assert list(registry.execution_providers) == ["alpha"]
    errors = {info.name: info.errors for info in registry.plugin_infos()}
    assert any("slmk_execution_providers" in e and "driver exploded" in e for e in errors["RaisesInHook"])
    assert any("expected ExecutionProvider" in e for e in errors["ReturnsWrongType"])


def test_unknown_record_name_lists_known_ones():
    registry = make_registry(ProvidesAlpha())
    with pytest.raises(SlmkError, match=r"unknown execution provider 'beta'.*known: alpha"):
        registry.get("slmk_execution_providers", "beta", "execution provider")


def _write_distribution(site, dist: str, module: str, entry_name: str, source: str) -> None:
    """A real installed distribution: a module plus the dist-info pip would write."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[slmk]\n{entry_name} = {module}\n")
    (info / "RECORD").write_text("")


@pytest.fixture
def third_party_site(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    _write_distribution(
        site,
        "slmk-npu-demo",
        "slmk_npu_demo",
        "npu-demo",
        """
        from slmk import hookimpl
        from slmk.records import ExecutionProvider, Usability

        @hookimpl
        def slmk_execution_providers():
            yield ExecutionProvider(
                name="npu-demo", description="a third-party provider", ort_provider="NpuExecutionProvider",
                genai_provider="npu", builder_ep="cpu", olive_device="npu", foundry_suffix="npu-demo-npu",
                build_precisions=("int4",), run_precisions=("int4",),
                probe=lambda: Usability(False, "no NPU here", fix="install the NPU driver"),
            )
    """,
    )
    _write_distribution(
        site,
        "slmk-broken",
        "slmk_broken_demo",
        "broken-demo",
        """
        raise ImportError("this plugin needs a library that is not installed")
    """,
    )
    return site


def test_third_party_plugin_found_through_entry_point_and_broken_one_skipped(run_slmk, third_party_site):
    result = run_slmk("plugins", "--json", env={"PYTHONPATH": str(third_party_site)})
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    good = plugins["npu-demo"]
    assert good["loaded"] and good["distribution"] == "slmk-npu-demo" and good["version"] == "1.2.3"
    assert good["records"]["slmk_execution_providers"] == ["npu-demo"]
    broken = plugins["broken-demo"]
    assert not broken["loaded"]
    assert "ImportError: this plugin needs a library" in broken["errors"][0]
    assert plugins["system"]["loaded"], "built-in plugins still load"


def test_disable_plugins_env_var_skips_named_plugin(run_slmk, third_party_site):
    result = run_slmk(
        "plugins", "--json", env={"PYTHONPATH": str(third_party_site), "SLMK_DISABLE_PLUGINS": "npu-demo,broken-demo"}
    )
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert not plugins["npu-demo"]["loaded"] and "SLMK_DISABLE_PLUGINS" in plugins["npu-demo"]["errors"][0]
    assert plugins["broken-demo"]["errors"] == ["disabled by SLMK_DISABLE_PLUGINS"]


def test_doctor_reports_broken_plugin_without_failing(run_slmk, third_party_site):
    result = run_slmk("doctor", "--json", env={"PYTHONPATH": str(third_party_site)})
    report = json.loads(result.stdout)
    names = {c["name"]: c for c in report["checks"]}
    assert (
        "broken-demo" in names["plugin:broken-demo"]["detail"] or "ImportError" in names["plugin:broken-demo"]["detail"]
    )
    assert names["ep:npu-demo"]["status"] == "warn" and names["ep:npu-demo"]["fix"] == "install the NPU driver"
