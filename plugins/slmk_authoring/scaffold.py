"""``slmk plugin new``: render plugin_template/ into a new plugin package.

The template is plain text with ``{{ key }}`` placeholders: one word with exactly one
space on each side, so the Jinja in chat templates (``{{ '<|im_start|>' }}``) and the
``{{Content}}`` of f-strings pass through. The set of keys is fixed and an unknown one
is an error, so a typo cannot reach a generated package.

``common/`` holds the files every plugin has; ``kinds/<kind>.py.tmpl`` is the hook
module of each kind, ``kinds/<kind>_test.py.tmpl`` its tests and ``kinds/<kind>.md.tmpl``
its part of the README. In paths, ``__module__`` stands for the import package and a
leading ``dot-`` for ``.``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from slmk.api import SlmkError, UsageError, __version__
from slmk.api.authoring import PROJECT
from slmk.api.files import package_data_dir


@dataclass(frozen=True)
class Kind:
    label: str  # what the README and the package description call it
    hook: str
    record: str
    summary: str  # what the generated example does
    dependencies: tuple[str, ...] = ()  # beyond slmk itself


KINDS: dict[str, Kind] = {
    "family": Kind(
        "model family", "slmk_model_families", "ModelFamily", "recognises its models and gives their prompt template"
    ),
    "hardware": Kind(
        "execution provider",
        "slmk_execution_providers",
        "ExecutionProvider",
        "names the hardware for each tool and probes whether it is usable here",
    ),
    "converter": Kind(
        "converter", "slmk_converters", "Converter", "copies the ONNX Runtime GenAI build a model folder ships"
    ),
    "quantizer": Kind(
        "quantizer",
        "slmk_quantizers",
        "Quantizer",
        "quantizes fp32 ONNX builds to int8 (dynamic)",
        ("onnx>=1.17", "onnxruntime>=1.20", "numpy>=1.26"),
    ),
    "installer": Kind(
        "installer", "slmk_installers", "Installer", "keeps installed builds in a plain folder, one folder per version"
    ),
    "runtime": Kind(
        "runtime",
        "slmk_runtimes",
        "Runtime",
        "loads builds with onnxruntime-genai and streams answers",
        ("onnxruntime-genai>=0.18",),
    ),
    "probe": Kind("probe", "slmk_probes", "Probe", "checks the free disk space where slmk builds"),
}
KIND_NAMES: tuple[str, ...] = tuple(KINDS)
KINDS_BY_HOOK: dict[str, str] = {kind.hook: kind.record for kind in KINDS.values()}

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
MAX_NAME_LENGTH = 40
_PLACEHOLDER = re.compile(r"\{\{ (\w+) \}\}")
TEMPLATE_SUFFIX = ".tmpl"
HOOK_MODULE = "hooks.py"
TEST_MODULE = "test_plugin.py"


@dataclass(frozen=True)
class NewPlugin:
    """What ``slmk plugin new`` wrote."""

    path: Path
    name: str
    kind: str
    distribution: str
    module: str
    hook: str
    files: tuple[str, ...]
    notes: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path.resolve()),
            "name": self.name,
            "kind": self.kind,
            "distribution": self.distribution,
            "module": self.module,
            "entry_point": f'{self.name} = "{self.module}"',
            "hook": self.hook,
            "files": list(self.files),
            "notes": list(self.notes),
        }


def template_root() -> Path:
    """The plugin template: package data ``slmk_authoring.template`` (the repository's
    plugin_template/ folder, mapped into the package by pyproject.toml), in a wheel and a clone alike."""
    candidate = package_data_dir("slmk_authoring.template") or Path(__file__).resolve().parents[2] / "plugin_template"
    if (candidate / "common").is_dir() and (candidate / "kinds").is_dir():
        return candidate
    raise SlmkError(
        "slmk's plugin template is missing from this installation",
        hint="reinstall slmk, or run `slmk plugin new` from a checkout of its repository",
    )


def validate_name(name: str) -> None:
    if name.startswith(f"{PROJECT}-"):
        raise UsageError(
            f"plugin name {name!r} repeats the {PROJECT}- prefix",
            hint=f"pass {name.removeprefix(PROJECT + '-')!r}: the package is named {name} from it",
        )
    if not NAME_PATTERN.match(name) or len(name) > MAX_NAME_LENGTH:
        raise UsageError(
            f"plugin name {name!r} is not allowed",
            hint=f"use lowercase letters, digits and single dashes, starting with a letter, "
            f"at most {MAX_NAME_LENGTH} characters (e.g. my-family)",
        )


def placeholders(name: str, kind: str) -> dict[str, str]:
    spec = KINDS[kind]
    snake = name.replace("-", "_")
    parts = name.split("-")
    dependencies = (f"slmk>={__version__}", *spec.dependencies)
    return {
        "name": name,
        "snake": snake,
        "module": f"{PROJECT}_{snake}",
        "distribution": f"{PROJECT}-{name}",
        "title": " ".join(part.capitalize() for part in parts),
        "class_name": "".join(part.capitalize() for part in parts),
        "env_name": snake.upper(),
        "kind": kind,
        "label": spec.label,
        "hook": spec.hook,
        "record": spec.record,
        "summary": spec.summary,
        "slmk_version": __version__,
        "dependencies": "\n".join(f'    "{dependency}",' for dependency in dependencies),
    }


def render_text(text: str, values: dict[str, str], origin: str) -> str:
    """Fill ``{{ key }}`` placeholders; an unknown key is an error that names the file."""

    def fill(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise SlmkError(
                f"{origin}: unknown placeholder {{{{ {key} }}}}",
                hint=f"known placeholders: {', '.join(sorted(values))}",
            )
        return values[key]

    return _PLACEHOLDER.sub(fill, text)


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def render_files(name: str, kind: str, root: Path | None = None) -> dict[str, str]:
    """Every file of the new package: relative POSIX path -> text."""
    validate_name(name)
    if kind not in KINDS:
        raise UsageError(f"unknown plugin kind {kind!r}", hint=f"choose one of {', '.join(KIND_NAMES)}")
    root = root or template_root()
    values = placeholders(name, kind)
    kinds = root / "kinds"
    values["kind_readme"] = render_text(_read(kinds / f"{kind}.md.tmpl"), values, f"kinds/{kind}.md.tmpl").strip()
    files: dict[str, str] = {}
    common = root / "common"
    for template in sorted(common.rglob(f"*{TEMPLATE_SUFFIX}")):
        relative = template.relative_to(common).as_posix()
        target = relative.removesuffix(TEMPLATE_SUFFIX).replace("__module__", values["module"])
        target = re.sub(r"(^|/)dot-", r"\1.", target)
        files[target] = render_text(_read(template), values, f"common/{relative}")
    package = f"src/{values['module']}"
    files[f"{package}/{HOOK_MODULE}"] = render_text(_read(kinds / f"{kind}.py.tmpl"), values, f"kinds/{kind}.py.tmpl")
    files[f"tests/{TEST_MODULE}"] = render_text(
        _read(kinds / f"{kind}_test.py.tmpl"), values, f"kinds/{kind}_test.py.tmpl"
    )
    return dict(sorted(files.items()))


def _name_taken(name: str, distribution: str) -> str | None:
    """The distribution that already owns entry point ``name``: the registry keeps only the first."""
    from importlib_metadata import entry_points

    for ep in entry_points(group=PROJECT):
        owner = ep.dist.name if ep.dist else ""
        if ep.name == name and owner.replace("_", "-").lower() != distribution:
            return owner or ep.value
    return None


def new_plugin(name: str, kind: str, output_dir: Path | str = ".", *, force: bool = False) -> NewPlugin:
    """Write ``<output_dir>/slmk-<name>/``, atomically; refuse an existing folder unless ``force``."""
    from slmk.api.files import atomic_dir

    files = render_files(name, kind)
    values = placeholders(name, kind)
    taken_by = _name_taken(name, values["distribution"])
    if taken_by:
        raise UsageError(
            f"the plugin name {name!r} is already the entry point of {taken_by}",
            hint="choose another name: slmk loads only one plugin of a name",
        )
    target = Path(output_dir).expanduser() / values["distribution"]
    with atomic_dir(target, force=force) as staging:
        for relative, text in files.items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8", newline="\n")
    return NewPlugin(
        path=target,
        name=name,
        kind=kind,
        distribution=values["distribution"],
        module=values["module"],
        hook=values["hook"],
        files=tuple(files),
        notes=_record_name_notes(name, values["hook"]),
    )


def _record_name_notes(name: str, hook: str) -> tuple[str, ...]:
    """A warning when an installed plugin already contributes a record of this name: slmk
    stops on two records of one name, so one of the plugins would have to be disabled."""
    from slmk.api.operations import get_registry

    registry = get_registry()
    try:
        owner = registry.owner(hook, name) if name in registry.records(hook) else None
    except SlmkError:  # an existing conflict among installed plugins: not this command's business
        return ()
    if owner is None or owner == name:  # none, or this very plugin, installed before
        return ()
    return (
        f"plugin {owner!r} already contributes the {KINDS_BY_HOOK[hook]} {name!r}: installing both stops "
        f"slmk with a conflict; rename yours or run with SLMK_DISABLE_PLUGINS={owner}",
    )
