"""Shared fixtures: an isolated environment and session-cached builds of the tiny model."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import pytest
from _signals import default_signals

REPO = Path(__file__).resolve().parent.parent
TINY_MODEL = REPO / "examples" / "tiny-chat" / "model"
TINY_DATA = REPO / "examples" / "tiny-chat" / "data"

# The suite sets slmk's environment itself: a SLMK_* setting the shell that runs the tests
# carries (SLMK_CONFIG, SLMK_RUNTIME, SLMK_DISABLE_PLUGINS, SLMK_TEST_PAUSE_AT ...) would change
# what every test sees. SLMK_ARCH_REPORT asks tests/test_architectures.py for a report.
for _name in [name for name in os.environ if name.startswith("SLMK_") and name != "SLMK_ARCH_REPORT"]:
    del os.environ[_name]

# Set before any tool is imported: the tools read these at import time.
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="slmk-tests-"))
os.environ.update(
    {
        "ORT_DISABLE_TELEMETRY": "1",
        "OLIVE_DISABLE_TELEMETRY": "1",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(_SESSION_TMP / "hf-home"),
        "SLMK_CACHE_DIR": str(_SESSION_TMP / "slmk-cache"),
        "SLMK_FOUNDRY_CACHE": str(_SESSION_TMP / "foundry-cache"),
    }
)


def pytest_sessionfinish(session, exitstatus):
    import shutil

    shutil.rmtree(_SESSION_TMP, ignore_errors=True)


@pytest.fixture(scope="session")
def session_tmp() -> Path:
    return _SESSION_TMP


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    assert (TINY_MODEL / "config.json").is_file(), "examples/tiny-chat/model is missing"
    return TINY_MODEL


@pytest.fixture(scope="session")
def tiny_eval() -> list[dict]:
    return [json.loads(line) for line in (TINY_DATA / "eval.jsonl").read_text().splitlines() if line.strip()]


_BUILDS: dict[tuple[str, str], Path] = {}


@pytest.fixture(scope="session")
def tiny_build(tiny_model_dir):
    """tiny_build("int4") -> a session-cached slmk build of the tiny model (cpu)."""

    def build(precision: str = "int4", execution_provider: str = "cpu") -> Path:
        key = (precision, execution_provider)
        if key not in _BUILDS:
            from slmk.app import convert

            out = _SESSION_TMP / "builds" / f"tiny-{precision}-{execution_provider}"
            convert(tiny_model_dir, out, precision=precision, execution_provider=execution_provider)
            _BUILDS[key] = out
        return _BUILDS[key]

    return build


@pytest.fixture
def run_slmk(tmp_path):
    """Run the real `slmk` console entry point in a subprocess; returns CompletedProcess."""
    import subprocess

    def run(
        *args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 900, input: str | None = None
    ):
        full_env = {**os.environ, **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "slmk", *args],
            cwd=cwd or tmp_path,
            env=full_env,
            preexec_fn=default_signals,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )

    return run


@pytest.fixture(scope="module")
def one_torch_thread():
    """The tiny model's matrices gain nothing from threads, and on a busy two-core runner
    OpenMP's spinning threads make each torch op up to 100x slower (GPTQ, HQQ)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", autouse=True)
def _release_foundry_sdk():
    """The Foundry Local SDK manager is a process-wide singleton bound to one cache: a module
    that started it closes it, so the next module starts from nothing."""
    yield
    sdk = sys.modules.get("slmk_foundry.sdk")
    if sdk is not None:
        sdk.close()
