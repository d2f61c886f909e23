"""Execution providers: the name each tool gives a piece of hardware, and whether it works here.

Each probe is a small function that never raises and imports nothing heavy: it
looks at installed distributions and at the operating system. Results are cached;
``SLMK_OVERRIDE_CUDA`` is read on every call (like conda's ``CONDA_OVERRIDE_CUDA``).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from functools import cache
from importlib import metadata
from pathlib import Path

from slmk.api import ExecutionProvider, Usability

from .packages import first_installed

CUDA_OVERRIDE = "SLMK_OVERRIDE_CUDA"
_FALSE = ("", "0", "false", "no", "off")

#: Distributions whose files may hold onnxruntime provider libraries.
_ORT_DISTRIBUTIONS = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-directml",
    "onnxruntime-genai",
    "onnxruntime-genai-core",
    "onnxruntime-genai-cuda",
    "onnxruntime-genai-directml",
    "onnxruntime-genai-winml",
)
_PROVIDER_LIBRARY = re.compile(r"onnxruntime_providers_(\w+?)\.(?:so|dll|dylib)$")


@cache
def provider_libraries() -> dict[str, str]:
    """Provider libraries shipped by the installed onnxruntime packages: {provider: distribution}.

    Read from the distributions' RECORD files, so nothing is imported. ``shared`` is
    the common base every provider library needs, not a provider itself.
    """
    found: dict[str, str] = {}
    for name in _ORT_DISTRIBUTIONS:
        try:
            files = metadata.distribution(name).files or []
        except Exception:
            continue
        for file in files:
            match = _PROVIDER_LIBRARY.search(file.name)
            if match and match.group(1) != "shared":
                found.setdefault(match.group(1), name)
    return found


def _always_usable() -> Usability:
    return Usability(True, "the CPU provider is built into onnxruntime")


@cache
def _gpu_visible() -> str | None:
    """Where an NVIDIA GPU shows itself, or None."""
    gpus = Path("/proc/driver/nvidia/gpus")
    try:
        if gpus.is_dir() and any(gpus.iterdir()):
            return str(gpus)
    except OSError:
        pass
    if Path("/dev/nvidia0").exists():
        return "/dev/nvidia0"
    if sys.platform != "linux":  # Windows has no /proc: the driver installs nvidia-smi
        found = shutil.which("nvidia-smi")
        if found:
            return found
    return None


@cache
def _cuda_package() -> str | None:
    installed = first_installed(("onnxruntime-genai-cuda",))
    if installed:
        return f"{installed[0]} {installed[1]}"
    if "cuda" in provider_libraries():
        return f"the CUDA provider library of {provider_libraries()['cuda']}"
    return None


def cuda_usability() -> Usability:
    override = os.environ.get(CUDA_OVERRIDE)
    if override is not None:
        if override.strip().lower() in _FALSE:
            return Usability(False, f"turned off by {CUDA_OVERRIDE}={override}", fix=f"unset {CUDA_OVERRIDE}")
        return Usability(True, f"forced on by {CUDA_OVERRIDE}={override} (not detected)")
    return _detected_cuda()


@cache
def _detected_cuda() -> Usability:
    package, gpu = _cuda_package(), _gpu_visible()
    install = "pip install onnxruntime-genai-cuda==0.18.0"
    if package and gpu:
        return Usability(True, f"{package}; NVIDIA GPU at {gpu}")
    if not package and not gpu:
        return Usability(
            False,
            "no NVIDIA GPU visible and no CUDA build of onnxruntime-genai installed",
            fix=f"on a machine with an NVIDIA GPU and driver: {install}",
        )
    if not package:
        return Usability(False, f"NVIDIA GPU at {gpu}, but no CUDA build of onnxruntime-genai installed", fix=install)
    return Usability(
        False,
        f"{package} is installed, but no NVIDIA GPU is visible (/proc/driver/nvidia, /dev/nvidia0)",
        fix="install the NVIDIA driver, or pass the GPU into the container (docker --gpus all)",
    )


@cache
def dml_usability() -> Usability:
    if sys.platform != "win32":
        return Usability(
            False,
            f"DirectML runs only on Windows (this is {sys.platform})",
            fix="build for dml here if you like; run it on Windows, or use -e cpu/cuda",
        )
    installed = first_installed(("onnxruntime-genai-directml", "onnxruntime-genai-winml"))
    if installed:
        return Usability(True, f"{installed[0]} {installed[1]} (not verified by slmk's tests, which run on Linux)")
    return Usability(
        False,
        "no DirectML build of onnxruntime-genai installed",
        fix="pip install onnxruntime-genai-winml==0.18.0 (or onnxruntime-genai-directml)",
    )


@cache
def webgpu_usability() -> Usability:
    installed = first_installed(("onnxruntime-ep-webgpu", "onnxruntime-genai-winml"))
    if installed:
        return Usability(True, f"{installed[0]} {installed[1]} (not verified by slmk's tests)")
    return Usability(
        False,
        "no WebGPU execution provider installed (the default onnxruntime build has none)",
        fix="pip install onnxruntime-ep-webgpu (unverified with onnxruntime-genai 0.18), or use -e cpu",
    )


_ALL = ("int4", "int8", "fp16", "bf16", "fp32")

CPU = ExecutionProvider(
    name="cpu",
    description="CPU (onnxruntime's default provider)",
    # fp16/bf16 build for cpu but onnxruntime has no CPU kernels to load them.
    build_precisions=_ALL,
    run_precisions=("int4", "int8", "fp32"),
    probe=_always_usable,
)
CUDA = ExecutionProvider(
    name="cuda",
    description="NVIDIA GPU through CUDA",
    build_precisions=_ALL,
    run_precisions=_ALL,
    probe=cuda_usability,
    aliases=("gpu",),
)
DML = ExecutionProvider(
    name="dml",
    description="DirectML (any DirectX 12 GPU on Windows)",
    build_precisions=("int4", "fp16"),
    run_precisions=("int4", "fp16"),
    probe=dml_usability,
    aliases=("directml",),
)
WEBGPU = ExecutionProvider(
    name="webgpu",
    description="WebGPU (Dawn: Vulkan, Metal or DirectX 12)",
    build_precisions=("int4", "int8"),
    run_precisions=("int4", "int8"),
    probe=webgpu_usability,
)

EXECUTION_PROVIDERS: tuple[ExecutionProvider, ...] = (CPU, CUDA, DML, WEBGPU)


def clear_caches() -> None:
    """Forget cached findings (after installing a package in the same process)."""
    for function in (provider_libraries, _gpu_visible, _cuda_package, _detected_cuda, dml_usability, webgpu_usability):
        function.cache_clear()
