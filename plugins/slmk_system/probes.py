"""The checks ``slmk doctor`` runs: Python, memory, disk, packages, known-bad versions,
provider libraries, telemetry and execution providers. Each never raises."""

from __future__ import annotations

import functools
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from slmk.api import Probe, ProbeResult

from .packages import PACKAGES, RULES, installed, rule_names, rule_problems, version_of
from .providers import provider_libraries

MIN_PYTHON = (3, 10)
#: Converting loads the fp32 weights; a 1.5B-parameter model needs about 6 GB for them alone.
MIN_AVAILABLE_RAM_GB = 8.0
MIN_FREE_DISK_GB = 10.0
TELEMETRY_VARIABLES = ("ORT_DISABLE_TELEMETRY", "OLIVE_DISABLE_TELEMETRY")


def _never_raises(name: str) -> Callable[[Callable[[], Iterable[ProbeResult]]], Callable[[], list[ProbeResult]]]:
    """Turn an exception inside a check into a finding, so one broken check never hides the others."""

    def wrap(check: Callable[[], Iterable[ProbeResult]]) -> Callable[[], list[ProbeResult]]:
        @functools.wraps(check)
        def safe() -> list[ProbeResult]:
            try:
                return list(check())
            except Exception as exc:
                return [
                    ProbeResult(
                        name,
                        "warn",
                        f"the check could not run: {type(exc).__name__}: {exc}",
                        fix="report this to slmk's authors",
                    )
                ]

        return safe

    return wrap


@_never_raises("python")
def check_python() -> Iterator[ProbeResult]:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info[:2] >= MIN_PYTHON:
        yield ProbeResult("python", "ok", f"Python {version} at {sys.executable}", data={"version": version})
    else:
        yield ProbeResult(
            "python",
            "fail",
            f"Python {version} is older than {'.'.join(map(str, MIN_PYTHON))}",
            fix="use Python 3.10 or newer",
            data={"version": version},
        )


def _disk_target() -> Path:
    from slmk.api.files import cache_root

    path = cache_root()
    while not path.exists() and path != path.parent:  # the cache may not exist yet: measure its disk
        path = path.parent
    return path


@_never_raises("memory")
def check_memory() -> Iterator[ProbeResult]:
    try:
        import psutil
    except ImportError:
        yield ProbeResult("memory", "warn", "psutil is not installed, memory not checked", fix="pip install psutil")
        return
    memory = psutil.virtual_memory()
    total, available = memory.total / 2**30, memory.available / 2**30
    data = {"total_gb": round(total, 1), "available_gb": round(available, 1)}
    detail = f"{available:.1f} GB available of {total:.1f} GB"
    if available < MIN_AVAILABLE_RAM_GB:
        yield ProbeResult(
            "memory",
            "warn",
            f"{detail}: below {MIN_AVAILABLE_RAM_GB:.0f} GB, converting "
            "models over 1B parameters may run out of memory",
            fix="close other programs, or convert on a machine with more memory",
            data=data,
        )
    else:
        yield ProbeResult("memory", "ok", detail, data=data)


@_never_raises("disk")
def check_disk() -> Iterator[ProbeResult]:
    target = _disk_target()
    free = shutil.disk_usage(target).free / 2**30
    data = {"path": str(target), "free_gb": round(free, 1)}
    if free < MIN_FREE_DISK_GB:
        yield ProbeResult(
            "disk",
            "warn",
            f"{free:.1f} GB free at {target}: below {MIN_FREE_DISK_GB:.0f} GB, "
            "a build and its cached steps may not fit",
            fix="free disk space, or point SLMK_CACHE_DIR to a larger disk",
            data=data,
        )
    else:
        yield ProbeResult("disk", "ok", f"{free:.1f} GB free at {target}", data=data)


@_never_raises("packages")
def check_packages() -> Iterator[ProbeResult]:
    for package in PACKAGES:
        found = installed(package)
        if found:
            name, version = found
            shown = version if name == package.name else f"{version} (as {name})"
            note = f"; {package.note}" if package.note else ""
            yield ProbeResult(
                f"package:{package.name}",
                "ok",
                f"{shown}: {package.needed_for}{note}",
                data={"distribution": name, "version": version},
            )
            continue
        if package.only_with and not version_of(package.only_with):
            continue
        status = package.missing_status
        wording = "not installed (optional)" if status == "ok" else "not installed"
        yield ProbeResult(
            f"package:{package.name}",
            status,
            f"{wording}: needed for {package.needed_for}",
            fix=package.install,
            data={"distribution": package.name, "version": None},
        )


def installed_versions() -> dict[str, str | None]:
    """Versions of every distribution the rules mention; a package's alternatives count as it."""
    by_name = {package.name: package for package in PACKAGES}
    versions: dict[str, str | None] = {}
    for name in rule_names():
        found = installed(by_name[name]) if name in by_name else None
        versions[name] = found[1] if found else version_of(name)
    return versions


@_never_raises("versions")
def check_version_rules() -> Iterator[ProbeResult]:
    versions = installed_versions()
    clean = True
    for rule in RULES:
        problems = rule_problems(rule, versions)
        if problems is None:
            continue
        clean = False
        detail = rule.detail.format_map(
            {**{k: v or "absent" for k, v in versions.items()}, "problems": "; ".join(problems)}
        )
        yield ProbeResult(f"versions:{rule.name}", rule.status, detail, fix=rule.fix)
    if clean:
        yield ProbeResult("versions", "ok", "no known-bad version combination")


@_never_raises("provider-libraries")
def check_provider_libraries() -> Iterator[ProbeResult]:
    libraries = provider_libraries()
    if libraries:
        listed = ", ".join(f"{provider} (from {dist})" for provider, dist in sorted(libraries.items()))
        yield ProbeResult(
            "provider-libraries",
            "ok",
            f"CPU built in; provider libraries: {listed}",
            data={"providers": sorted(libraries)},
        )
    else:
        yield ProbeResult(
            "provider-libraries",
            "ok",
            "CPU only: the installed onnxruntime packages ship no GPU/NPU provider libraries",
            data={"providers": []},
        )


@_never_raises("telemetry")
def check_telemetry() -> Iterator[ProbeResult]:
    values = {name: os.environ.get(name) for name in TELEMETRY_VARIABLES}
    off = [name for name, value in values.items() if value == "1"]
    if len(off) == len(values):
        yield ProbeResult("telemetry", "ok", "off: " + ", ".join(f"{n}=1" for n in off), data=values)
    else:
        unset = ", ".join(name for name in values if name not in off)
        yield ProbeResult(
            "telemetry",
            "ok",
            f"{unset} not set in this shell; slmk sets "
            f"{', '.join(f'{n}=1' for n in TELEMETRY_VARIABLES)} for its own runs",
            data=values,
        )


PROBES: tuple[Probe, ...] = (
    Probe("python", f"Python is {'.'.join(map(str, MIN_PYTHON))} or newer", check_python),
    Probe("memory", "enough free memory to convert", check_memory),
    Probe("disk", "enough free disk for builds and the step cache", check_disk),
    Probe("packages", "the packages each command needs, with versions (read from metadata)", check_packages),
    Probe("versions", "no known-bad combination of package versions", check_version_rules),
    Probe("provider-libraries", "onnxruntime provider libraries installed", check_provider_libraries),
    Probe("telemetry", "telemetry of the tools is off for slmk's runs", check_telemetry),
)
