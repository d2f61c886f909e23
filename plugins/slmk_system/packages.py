"""What slmk knows about the packages it drives: one table of data, read by the probes.

Versions come from installed distribution metadata; nothing here imports the
packages themselves (``slmk doctor`` must stay fast and free of torch/onnxruntime).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata


@dataclass(frozen=True)
class Package:
    """A distribution slmk uses, what needs it, and what to do when it is missing."""

    name: str
    needed_for: str
    install: str
    missing_status: str = "warn"  # "fail" when nothing useful works without it, "ok" when optional
    alternatives: tuple[str, ...] = ()  # other distributions that provide the same modules
    only_with: str | None = None  # only matters when this other distribution is installed
    note: str = ""


@dataclass(frozen=True)
class Rule:
    """A combination of versions known to break: fires when every ``when`` spec holds
    and (if ``require`` is given) some ``require`` spec does not."""

    name: str
    when: Mapping[str, str]
    status: str
    detail: str  # formatted with the installed versions: {onnxruntime-genai}, {problems}
    fix: str = ""
    require: Mapping[str, str] = field(default_factory=dict)


PACKAGES: tuple[Package, ...] = (
    Package(
        "onnxruntime-genai",
        "convert and run (model builder and runtime)",
        "pip install 'slmk[ortgenai]'",
        missing_status="fail",
        alternatives=(
            "onnxruntime-genai-cuda",
            "onnxruntime-genai-directml",
            "onnxruntime-genai-winml",
            "onnxruntime-genai-core",
        ),
    ),
    Package(
        "onnxruntime",
        "the runtime under onnxruntime-genai",
        "pip install onnxruntime==1.31.0",
        missing_status="fail",
        alternatives=("onnxruntime-gpu", "onnxruntime-directml"),
    ),
    Package("onnx", "convert (the model builder)", "pip install 'slmk[ortgenai]'"),
    Package(
        "onnx-ir",
        "convert (the model builder imports it)",
        "pip install onnx-ir",
        note="the onnxruntime-genai builder needs it but does not declare it",
    ),
    Package("torch", "convert (the builder reads the weights with it)", "pip install 'slmk[convert]'"),
    Package("transformers", "convert (config, tokenizer and weights loading)", "pip install 'slmk[convert]'"),
    Package(
        "olive-ai",
        "`slmk convert --via olive` (RTN and calibrated GPTQ quantization)",
        "pip install 'slmk[olive]'",
        missing_status="ok",
    ),
    Package(
        "foundry-local-sdk",
        "install into and run with Foundry Local",
        "pip install 'slmk[foundry]'",
        missing_status="ok",
    ),
)

RULES: tuple[Rule, ...] = (
    # Olive's own version trap is probed by the olive plugin, next to the code it concerns.
    Rule(
        name="foundry-local-sdk-pins",
        when={"foundry-local-sdk": "==2.2.1"},
        require={"onnxruntime": "==1.31.0", "onnxruntime-genai-core": "==0.18.0"},
        status="fail",
        detail="foundry-local-sdk 2.2.1 requires onnxruntime==1.31.0 and onnxruntime-genai-core==0.18.0: {problems}",
        fix="pip install onnxruntime==1.31.0 onnxruntime-genai==0.18.0",
    ),
)


def version_of(name: str) -> str | None:
    """The installed version of a distribution, or None; never raises."""
    try:
        return metadata.version(name)
    except Exception:  # PackageNotFoundError, or broken metadata
        return None


def first_installed(names: Iterable[str]) -> tuple[str, str] | None:
    for name in names:
        version = version_of(name)
        if version:
            return name, version
    return None


def installed(package: Package) -> tuple[str, str] | None:
    return first_installed((package.name, *package.alternatives))


def _release(version: str) -> tuple[int, ...]:
    numbers = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(n) for n in numbers.group(0).split(".")) if numbers else ()


def satisfies(version: str | None, spec: str) -> bool:
    """A small subset of PEP 440 specifiers: ==X, ==X.*, !=X, >=X, <=X, >X, <X."""
    if version is None:
        return False
    match = re.fullmatch(r"\s*(==|!=|>=|<=|>|<)\s*([\w.]+?)(\.\*)?\s*", spec)
    if not match:
        raise ValueError(f"unsupported version specifier {spec!r}")
    op, wanted, wildcard = match.groups()
    have, want = _release(version), _release(wanted)
    if wildcard:
        same = have[: len(want)] == want
        return same if op == "==" else not same
    padded = max(len(have), len(want))
    have, want = have + (0,) * (padded - len(have)), want + (0,) * (padded - len(want))
    return {
        "==": have == want,
        "!=": have != want,
        ">=": have >= want,
        "<=": have <= want,
        ">": have > want,
        "<": have < want,
    }[op]


def rule_problems(rule: Rule, versions: Mapping[str, str | None]) -> list[str] | None:
    """None when the rule does not fire; else what is wrong (possibly nothing to list)."""
    if not all(satisfies(versions.get(name), spec) for name, spec in rule.when.items()):
        return None
    if not rule.require:
        return []
    problems = [
        f"{name} is {versions.get(name) or 'not installed'} (needs {spec.lstrip('=')})"
        for name, spec in rule.require.items()
        if not satisfies(versions.get(name), spec)
    ]
    return problems or None


def rule_names() -> set[str]:
    """Every distribution a rule mentions (their versions are looked up once)."""
    return {name for rule in RULES for name in (*rule.when, *rule.require)}
