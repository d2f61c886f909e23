"""slmk_system: execution-provider records, their probes, and the doctor probes."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata

import pytest
import slmk_system
from slmk_system import packages, probes, providers

from slmk.records import PRECISIONS, ExecutionProvider, ProbeResult, Usability
from slmk.testing import make_registry


@pytest.fixture(autouse=True)
def fresh_probe_caches():
    providers.clear_caches()
    yield
    providers.clear_caches()


@pytest.fixture
def registry():
    return make_registry(slmk_system)


def test_execution_provider_records_are_well_formed(registry):
    eps = registry.execution_providers
    assert set(eps) >= {"cpu", "cuda", "dml", "webgpu"}
    for name, ep in eps.items():
        assert isinstance(ep, ExecutionProvider) and ep.name == name
        assert set(ep.run_precisions) <= set(ep.build_precisions) <= set(PRECISIONS)
        usability = ep.probe()
        assert isinstance(usability, Usability) and usability.reason
        assert usability.usable or usability.fix, f"{name} is unusable but says no fix"
    cpu = eps["cpu"]
    assert cpu.probe().usable
    assert cpu.run_precisions == ("int4", "int8", "fp32")
    assert {"fp16", "bf16"} <= set(cpu.build_precisions) - set(cpu.run_precisions)
    assert "gpu" in eps["cuda"].aliases


def test_cuda_probe_says_what_is_missing_here(monkeypatch):
    monkeypatch.delenv(providers.CUDA_OVERRIDE, raising=False)
    if providers._gpu_visible() and providers._cuda_package():
        pytest.skip("this machine really has CUDA")
    usability = providers.CUDA.probe()
    assert not usability.usable
    assert "onnxruntime-genai-cuda==0.18.0" in usability.fix or "NVIDIA" in usability.fix
    print(f"cuda here: {usability.reason} -> fix: {usability.fix}")


def test_cuda_override_is_read_on_every_call(monkeypatch):
    monkeypatch.setenv(providers.CUDA_OVERRIDE, "1")
    forced = providers.CUDA.probe()
    assert forced.usable and providers.CUDA_OVERRIDE in forced.reason
    monkeypatch.setenv(providers.CUDA_OVERRIDE, "0")
    off = providers.CUDA.probe()
    assert not off.usable and providers.CUDA_OVERRIDE in off.reason and off.fix
    monkeypatch.setenv(providers.CUDA_OVERRIDE, "")
    assert not providers.CUDA.probe().usable


def test_dml_is_honestly_unusable_off_windows():
    if sys.platform == "win32":
        pytest.skip("Windows may have DirectML")
    usability = providers.DML.probe()
    assert not usability.usable and "Windows" in usability.reason


def _findings(probe_list=probes.PROBES) -> dict[str, list[ProbeResult]]:
    out = {}
    for probe in probe_list:
        results = list(probe.check())
        assert results, f"probe {probe.name} returned nothing"
        assert all(isinstance(r, ProbeResult) for r in results)
        out[probe.name] = results
    return out


def test_doctor_probes_report_this_environment(registry):
    assert set(registry.probes) == {p.name for p in probes.PROBES}
    findings = _findings()
    assert findings["python"][0].status == "ok"
    assert {r.status for r in findings["memory"] + findings["disk"]} <= {"ok", "warn"}
    by_name = {r.name: r for r in findings["packages"]}
    assert by_name["package:onnxruntime-genai"].status == "ok"
    assert by_name["package:onnxruntime-genai"].data["version"] == metadata.version("onnxruntime-genai")
    assert by_name["package:onnx-ir"].status == "ok"
    rules = {r.name: r for r in findings["versions"]}
    assert "versions:foundry-local-sdk-pins" not in rules, "the pinned set is installed here"


def _pretend_installed(monkeypatch, versions: dict[str, str]):
    """Replace distribution metadata lookups: only ``versions`` exist, nothing has files."""

    def version(name):
        if name in versions:
            return versions[name]
        raise metadata.PackageNotFoundError(name)

    def distribution(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(packages.metadata, "version", version)
    monkeypatch.setattr(providers.metadata, "distribution", distribution)
    providers.clear_caches()


def test_missing_torch_is_a_warning_with_the_install_line(monkeypatch):
    _pretend_installed(
        monkeypatch,
        {
            "onnxruntime-genai": "0.18.0",
            "onnxruntime": "1.31.0",
            "onnx": "1.20.0",
            "onnx-ir": "0.1.0",
            "transformers": "5.0.0",
        },
    )
    results = {r.name: r for r in _findings()["packages"]}
    torch = results["package:torch"]
    assert torch.status == "warn" and torch.fix == "pip install 'slmk[convert]'"
    assert results["package:olive-ai"].status == "ok"  # optional


def test_nothing_installed_fails_the_runtime_packages_but_never_raises(monkeypatch):
    _pretend_installed(monkeypatch, {})
    findings = _findings()
    statuses = {r.name: r.status for r in findings["packages"]}
    assert statuses["package:onnxruntime-genai"] == "fail" and statuses["package:onnxruntime"] == "fail"
    assert statuses["package:onnx-ir"] == "warn"
    assert providers.CPU.probe().usable  # cpu is always there
    monkeypatch.delenv(providers.CUDA_OVERRIDE, raising=False)
    assert not providers.CUDA.probe().usable


def test_broken_metadata_still_gives_findings(monkeypatch):
    def broken(name):
        raise RuntimeError("corrupt METADATA")

    monkeypatch.setattr(packages.metadata, "version", broken)
    monkeypatch.setattr(providers.metadata, "distribution", broken)
    providers.clear_caches()
    findings = _findings()
    assert findings["packages"][0].status in ("fail", "warn")
    assert findings["provider-libraries"][0].status == "ok"


def test_foundry_pins_fail_with_the_exact_fix(monkeypatch):
    _pretend_installed(
        monkeypatch,
        {
            "foundry-local-sdk": "2.2.1",
            "onnxruntime": "1.30.0",
            "onnxruntime-genai": "0.18.0",
            "onnxruntime-genai-core": "0.18.0",
        },
    )
    results = {r.name: r for r in _findings()["versions"]}
    pins = results["versions:foundry-local-sdk-pins"]
    assert pins.status == "fail"
    assert "onnxruntime is 1.30.0 (needs 1.31.0)" in pins.detail
    assert pins.fix == "pip install onnxruntime==1.31.0 onnxruntime-genai==0.18.0"


def test_foundry_rule_applies_only_with_the_sdk(monkeypatch):
    _pretend_installed(monkeypatch, {"onnxruntime": "1.30.0", "onnxruntime-genai": "0.18.0"})
    names = {r.name for r in _findings()["versions"]}
    assert "versions:foundry-local-sdk-pins" not in names


@pytest.mark.parametrize(
    "version, spec, expected",
    [
        ("0.13.0", "==0.13.*", True),
        ("0.14.0", "==0.13.*", False),
        ("0.18.0", ">=0.16", True),
        ("0.15.9", ">=0.16", False),
        ("1.31.0", "==1.31.0", True),
        ("1.31", "==1.31.0", True),
        ("2.13.0+cpu", ">=2.0", True),
        ("1.0.0rc1", "<1.0.1", True),
        (None, ">=0", False),
    ],
)
def test_version_specifiers(version, spec, expected):
    assert packages.satisfies(version, spec) is expected


def test_probes_import_nothing_heavy():
    code = (
        "import sys, json, slmk_system\n"
        "from slmk_system import probes, providers\n"
        "[list(p.check()) for p in probes.PROBES]; [ep.probe() for ep in providers.EXECUTION_PROVIDERS]\n"
        "heavy = ('torch', 'transformers', 'onnxruntime', 'onnxruntime_genai', 'olive', 'onnx', 'numpy')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout) == []
