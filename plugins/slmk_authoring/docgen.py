"""Render docs/hooks.md from the hookspecs: ``slmk plugin hooks > docs/hooks.md`` (or
``python -m slmk_authoring.docgen > docs/hooks.md``).

For each hook: its signature and docstring (the ``Example::`` block as Python), then
the fields of the record it returns and of every record those fields refer to, read
from the dataclasses in ``slmk.records`` (types as written there; a comment beside a
field is its description). tests/test_docs.py fails when the file is out of date.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import re
import textwrap
import tokenize
from collections.abc import Callable, Iterator
from typing import Any

from slmk import api
from slmk.api.authoring import PROJECT, RECORD_TYPES, hookspecs

#: pluggy marks a hookspec function with this attribute.
SPEC_MARKER = f"{PROJECT}_spec"
EXAMPLE_MARKER = "Example::"
COMMAND = "slmk plugin hooks > docs/hooks.md"

#: Classes a field type may name, documented where they are first referred to.
_DOCUMENTED: dict[str, type] = {
    name: getattr(api, name)
    for name in api.__all__
    if inspect.isclass(getattr(api, name))
    and getattr(api, name).__module__ in ("slmk.records", "slmk.modelinfo", "slmk.progress")
}


def hookspec_functions() -> list[tuple[str, Callable[..., Any]]]:
    """Every hookspec, in the order hookspecs.py defines them."""
    return [(name, value) for name, value in vars(hookspecs).items() if callable(value) and hasattr(value, SPEC_MARKER)]


def split_docstring(doc: str) -> tuple[str, str | None]:
    """The prose of a hookspec docstring, and the code of its ``Example::`` block (dedented)."""
    prose, marker, rest = doc.partition(EXAMPLE_MARKER)
    if not marker:
        return doc.strip(), None
    block = []
    for line in rest.splitlines()[1:]:
        if line.strip() and not line.startswith((" ", "\t")):
            break  # the first unindented line ends a reST literal block
        block.append(line)
    code = textwrap.dedent("\n".join(block)).strip("\n")
    return prose.strip(), (code or None)


def _markdown(text: str) -> str:
    """reST inline literals (``x``) as Markdown ones (`x`)."""
    return re.sub(r"``(.+?)``", r"`\1`", text, flags=re.DOTALL)


def _annotation(value: Any) -> str:
    # annotations are strings here (``from __future__ import annotations``): show them as written
    return value if isinstance(value, str) else getattr(value, "__name__", repr(value))


def _signature(function: Callable[..., Any], skip_self: bool = False) -> str:
    """A signature as written in the source, without the quotes inspect puts around annotations."""
    signature = inspect.signature(function)
    parts = []
    for parameter in signature.parameters.values():
        if skip_self and parameter.name == "self":
            continue
        text = {parameter.VAR_POSITIONAL: "*", parameter.VAR_KEYWORD: "**"}.get(parameter.kind, "") + parameter.name
        if parameter.annotation is not parameter.empty:
            text += f": {_annotation(parameter.annotation)}"
        if parameter.default is not parameter.empty:
            text += f" = {parameter.default!r}"
        parts.append(text)
    returns = signature.return_annotation
    returns = "" if returns is signature.empty else f" -> {_annotation(returns)}"
    return f"({', '.join(parts)}){returns}"


def _type_name(cls: type) -> str:
    """``click.Command`` rather than ``click.core.Command``: the name users import."""
    return f"{cls.__module__.split('.')[0]}.{cls.__qualname__}"


def _field_comments(cls: type) -> dict[str, str]:
    """The ``# comment`` written after each field of a class, by field name."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments: dict[str, str] = {}
    line_fields: dict[int, str] = {}
    for number, line in enumerate(source.splitlines(), start=1):
        match = re.match(r"\s+(\w+)\s*:", line)
        if match and not line.lstrip().startswith(("def ", "#")):
            line_fields[number] = match.group(1)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT and token.start[0] in line_fields:
            comments[line_fields[token.start[0]]] = token.string.lstrip("#").strip()
    return comments


def _default(field: dataclasses.Field) -> str | None:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return None
    if callable(value):
        return getattr(value, "__name__", repr(value))
    return repr(value)


def _referenced(type_text: str) -> list[str]:
    return [name for name in re.findall(r"\b[A-Z]\w*\b", type_text) if name in _DOCUMENTED]


def _record_section(cls: type) -> list[str]:
    lines = [f"### {cls.__name__}", ""]
    doc = inspect.getdoc(cls)
    if doc and not doc.startswith(f"{cls.__name__}("):  # not the docstring dataclass() makes up
        lines += [_markdown(doc), ""]
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a field's comment where it is declared: the record base's too
        if klass.__module__ == cls.__module__:
            comments.update(_field_comments(klass))
    if dataclasses.is_dataclass(cls):
        # in the order the constructor takes them: positional first, then keyword-only (the base's priority)
        for field in sorted(dataclasses.fields(cls), key=lambda f: bool(f.kw_only)):
            entry = f"- `{field.name}`" + (" (keyword)" if field.kw_only else "") + f": `{field.type}`"
            default = _default(field)
            if default is not None:
                entry += f" = `{default}`"
            if field.name in comments:
                entry += f" — {comments[field.name]}"
            lines.append(entry)
        for name, member in vars(cls).items():
            if isinstance(member, property):
                returns = _annotation(inspect.signature(member.fget).return_annotation)
                lines.append(f"- `{name}` (property): `{returns}`")
    else:  # a Protocol or a plain class: its attributes
        for name, annotation in getattr(cls, "__annotations__", {}).items():
            lines.append(f"- `{name}`: `{annotation}`")
    for name, member in vars(cls).items():  # and its public methods
        if inspect.isfunction(member) and not name.startswith("_"):
            summary = (inspect.getdoc(member) or "").split("\n")[0]
            entry = f"- `{name}{_signature(member, skip_self=True)}`"
            lines.append(entry + (f" — {_markdown(summary)}" if summary else ""))
    lines.append("")
    return lines


def _records_for(hook_name: str, seen: set[str]) -> Iterator[type]:
    """The record a hook returns, then every record its fields refer to, each once."""
    queue = [RECORD_TYPES[hook_name].__name__]
    while queue:
        name = queue.pop(0)
        if name in seen or name not in _DOCUMENTED:
            continue
        seen.add(name)
        cls = _DOCUMENTED[name]
        yield cls
        if dataclasses.is_dataclass(cls):
            types = [str(field.type) for field in dataclasses.fields(cls)]
        else:
            types = [str(a) for a in getattr(cls, "__annotations__", {}).values()]
            types += [str(inspect.signature(m)) for m in vars(cls).values() if inspect.isfunction(m)]
        queue += [ref for text in types for ref in _referenced(text)]


def render() -> str:
    """The whole of docs/hooks.md."""
    hooks = hookspec_functions()
    out = [
        "# Hook reference",
        "",
        f"<!-- Generated from kernel/slmk/hookspecs.py and kernel/slmk/records.py by `{COMMAND}`. "
        "Do not edit: change the docstrings and rerun. -->",
        "",
        "Every hook takes no arguments and returns an iterable of records. Implement one with "
        "`from slmk.api import hookimpl` in a module registered under the `slmk` entry-point group; "
        "[plugin-authors.md](plugin-authors.md) explains discovery, lifecycle, errors and testing, "
        "and `slmk plugin new NAME --kind KIND` writes a working package to start from.",
        "",
        "| hook | returns |",
        "|---|---|",
    ]
    for name, _ in hooks:
        returned = RECORD_TYPES[name]
        link = (
            f"[`{returned.__name__}`](#{returned.__name__.lower()})"
            if returned.__name__ in _DOCUMENTED
            else f"`{_type_name(returned)}`"
        )
        out.append(f"| [`{name}`](#{name}) | {link} |")
    out.append("")
    seen: set[str] = set()
    for name, function in hooks:
        prose, example = split_docstring(inspect.getdoc(function) or "")
        out += [
            f"## {name}",
            "",
            "```python",
            "@hookimpl",
            f"def {name}{_signature(function)}: ...",
            "```",
            "",
            _markdown(prose),
            "",
        ]
        if example:
            out += ["Example:", "", "```python", example, "```", ""]
        record_type = RECORD_TYPES[name]
        if record_type.__name__ not in _DOCUMENTED:
            out += [f"Returns `{_type_name(record_type)}` objects.", ""]
            continue
        for cls in _records_for(name, seen):
            out += _record_section(cls)
    out += [
        "## Constants",
        "",
        f"- `slmk.api.PRECISIONS` = `{api.PRECISIONS!r}` — every precision slmk knows, smallest first",
        f"- `slmk.api.FORMAT_HF` = `{api.FORMAT_HF!r}` — a Hugging Face folder",
        f"- `slmk.api.FORMAT_ORTGENAI` = `{api.FORMAT_ORTGENAI!r}` — an ONNX Runtime GenAI folder",
        "",
    ]
    return "\n".join(out)


def main() -> None:
    import sys

    sys.stdout.write(render())


if __name__ == "__main__":
    main()
