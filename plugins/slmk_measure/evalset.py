"""Evaluation files: one JSON object a line, a conversation and what a good answer is.

``{"messages": [...], "expected": "substring"}`` (case-insensitive), or ``"exact"``
(the whole answer, stripped), or ``"regex"`` (a match anywhere); optionally the answer's
format: ``"format_regex"`` (must match the whole answer) or ``"json_schema"`` (the
answer must be JSON valid against it). ``max_new_tokens`` per item is allowed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmk.api import UsageError

ANSWER_KEYS = ("expected", "exact", "regex")
FORMAT_KEYS = ("format_regex", "json_schema")


@dataclass(frozen=True)
class EvalItem:
    line: int
    messages: tuple[dict[str, str], ...]
    expected: str | None = None
    exact: str | None = None
    regex: str | None = None
    format_regex: str | None = None
    json_schema: dict[str, Any] | None = None
    max_new_tokens: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def question(self) -> str:
        return self.messages[-1]["content"]

    @property
    def has_answer(self) -> bool:
        return any(getattr(self, key) is not None for key in ANSWER_KEYS)

    @property
    def has_format(self) -> bool:
        return self.format_regex is not None or self.json_schema is not None

    def answer_ok(self, answer: str) -> bool:
        if self.expected is not None and self.expected.casefold() not in answer.casefold():
            return False
        if self.exact is not None and answer.strip() != self.exact.strip():
            return False
        if self.regex is not None and not re.search(self.regex, answer):
            return False
        return True

    def format_problem(self, answer: str) -> str | None:
        """Why the answer breaks the required format, or None."""
        if self.format_regex is not None and not re.fullmatch(self.format_regex, answer.strip(), flags=re.DOTALL):
            return f"does not match format_regex {self.format_regex!r}"
        if self.json_schema is not None:
            try:
                value = json.loads(answer.strip())
            except ValueError as exc:
                return f"not JSON: {exc}"
            problem = schema_problem(value, self.json_schema)
            if problem:
                return problem
        return None

    def wanted(self) -> str:
        for key in ANSWER_KEYS + FORMAT_KEYS:
            value = getattr(self, key)
            if value is not None:
                return f"{key} {json.dumps(value)}" if key == "json_schema" else f"{key} {value!r}"
        return "?"


def load_eval(path: str | Path) -> list[EvalItem]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(
            f"eval file {path} not found", hint='pass a .jsonl file: one {"messages": [...], "expected": ...} a line'
        )
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise UsageError(f"{where} is not valid JSON: {exc}", hint="one JSON object a line") from None
        items.append(_item(data, number, where))
    if not items:
        raise UsageError(f"eval file {path} holds no items", hint='one {"messages": [...], "expected": ...} a line')
    return items


def _item(data: Any, number: int, where: str) -> EvalItem:
    hint = 'e.g. {"messages": [{"role": "user", "content": "..."}], "expected": "..."}'
    if not isinstance(data, dict):
        raise UsageError(f"{where} is not a JSON object", hint=hint)
    messages = data.get("messages")
    if (
        not isinstance(messages, list)
        or not messages
        or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        )
    ):
        raise UsageError(f"{where}: messages must be a non-empty list of {{role, content}} strings", hint=hint)
    if messages[-1]["role"] != "user":
        raise UsageError(f"{where}: the last message must be the user's", hint=hint)
    if not any(data.get(key) is not None for key in ANSWER_KEYS + FORMAT_KEYS):
        raise UsageError(
            f"{where} says nothing about the answer", hint=f"give one of {', '.join(ANSWER_KEYS + FORMAT_KEYS)}"
        )
    for key in ANSWER_KEYS + ("format_regex",):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise UsageError(f"{where}: {key} must be a string", hint=hint)
    for key in ("regex", "format_regex"):
        if data.get(key) is not None:
            try:
                re.compile(data[key])
            except re.error as exc:
                raise UsageError(f"{where}: {key} is not a valid regular expression: {exc}") from None
    schema = data.get("json_schema")
    if schema is not None and not isinstance(schema, dict):
        raise UsageError(
            f"{where}: json_schema must be an object", hint='e.g. {"type": "object", "required": ["name"]}'
        )
    new_tokens = data.get("max_new_tokens")
    if new_tokens is not None and (not isinstance(new_tokens, int) or new_tokens < 1):
        raise UsageError(f"{where}: max_new_tokens must be a positive integer")
    return EvalItem(
        line=number,
        messages=tuple({"role": m["role"], "content": m["content"]} for m in messages),
        expected=data.get("expected"),
        exact=data.get("exact"),
        regex=data.get("regex"),
        format_regex=data.get("format_regex"),
        json_schema=schema,
        max_new_tokens=new_tokens,
        raw=data,
    )


def model_data_dir(folder: str | Path) -> Path | None:
    """The ``data`` folder beside the model a folder was built from (``<model>/../data``).

    An HF folder (or an adapter folder) is its own source; a build or an install names
    its source in slmk_build.json.
    """
    folder = Path(folder)
    source = folder
    if not (folder / "config.json").is_file() or (folder / "genai_config.json").is_file():
        try:
            source = Path(json.loads((folder / "slmk_build.json").read_text(encoding="utf-8"))["source"])
        except (OSError, ValueError, KeyError, TypeError):
            if (folder / "genai_config.json").is_file():
                return None  # a build that does not say where it came from
    data = source.parent / "data"
    return data if data.is_dir() else None


def default_file(folder: str | Path, name: str) -> Path | None:
    data = model_data_dir(folder)
    return data / name if data is not None and (data / name).is_file() else None


# --------------------------------------------------------------------------- JSON schema
_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def schema_problem(value: Any, schema: dict[str, Any], where: str = "$") -> str | None:
    """Why ``value`` breaks ``schema``, or None.

    Uses the jsonschema package when it is installed; otherwise a built-in subset:
    type, enum, const, properties, required, additionalProperties (boolean), items,
    minItems/maxItems, minLength/maxLength, pattern, minimum/maximum, anyOf.
    """
    try:
        import jsonschema
    except ImportError:
        return _subset_problem(value, schema, where)
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(value))
    return f"{error.json_path}: {error.message}" if error else None


def _subset_problem(value: Any, schema: dict[str, Any], where: str) -> str | None:
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not any(_TYPES.get(k, lambda v: True)(value) for k in kinds):
            return f"{where}: expected {' or '.join(kinds)}, got {type(value).__name__}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{where}: {value!r} is not one of {schema['enum']}"
    if "const" in schema and value != schema["const"]:
        return f"{where}: {value!r} is not {schema['const']!r}"
    if "anyOf" in schema and all(_subset_problem(value, sub, where) for sub in schema["anyOf"]):
        return f"{where}: matches none of anyOf"
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                return f"{where}: missing required property {key!r}"
        properties = schema.get("properties", {})
        for key, item in value.items():
            if key in properties:
                problem = _subset_problem(item, properties[key], f"{where}.{key}")
                if problem:
                    return problem
            elif schema.get("additionalProperties") is False:
                return f"{where}: unexpected property {key!r}"
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            return f"{where}: fewer than {schema['minItems']} items"
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            return f"{where}: more than {schema['maxItems']} items"
        if isinstance(schema.get("items"), dict):
            for index, item in enumerate(value):
                problem = _subset_problem(item, schema["items"], f"{where}[{index}]")
                if problem:
                    return problem
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            return f"{where}: shorter than {schema['minLength']}"
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            return f"{where}: longer than {schema['maxLength']}"
        if "pattern" in schema and not re.search(schema["pattern"], value):
            return f"{where}: does not match pattern {schema['pattern']!r}"
    if _TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            return f"{where}: {value} is below the minimum {schema['minimum']}"
        if "maximum" in schema and value > schema["maximum"]:
            return f"{where}: {value} is above the maximum {schema['maximum']}"
    return None
