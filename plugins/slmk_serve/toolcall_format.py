"""Tool calls in a family's own format: parse them out of an answer, and write the grammar
that forces one (``ToolCallFormat`` of a ``ModelFamily`` says the format).

The grammar is llguidance's Lark dialect (onnxruntime-genai's ``lark_grammar`` guidance):
literal text, special tokens as ``<|name|>``, and ``%json {schema}`` for the call itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from slmk.api import ToolCallFormat
from slmk.api.templates import constraint_schema


def parse_tool_calls(fmt: ToolCallFormat, text: str) -> tuple[str, list[dict[str, Any]]] | None:
    """(the text before the calls, [{"name", "arguments": dict}]) or None when ``text`` holds no
    well-formed call (it is then an ordinary answer)."""
    if fmt.parse is not None:
        return fmt.parse(text)
    start, end = fmt.start.strip(), fmt.end.strip()
    at = text.find(start) if start else -1
    if at < 0:
        if start and not fmt.start_is_token:
            return None
        # no marker: the bare JSON (Llama 3), or a special-token marker the tokenizer's decoding dropped
        found = _decode_at(text, _skip_space(text, 0))
        rest = text[found[1] :].strip() if found else ""
        if end and rest.startswith(end):
            rest = rest[len(end) :].strip()
        calls = _calls(fmt, found[0]) if found and not rest else None
        return ("", calls) if calls else None
    content, objects, position = text[:at], [], at
    while position < len(text) and text.startswith(start, position):
        found = _decode_at(text, _skip_space(text, position + len(start)))
        if found is None:
            return None
        objects.append(found[0])
        position = _skip_space(text, found[1])
        if end:
            if not text.startswith(end, position):
                return None
            position = _skip_space(text, position + len(end))
        if fmt.json_list:
            break
    if text[position:].strip():
        return None
    calls = [call for value in objects for call in (_calls(fmt, value) or [None])]
    if not calls or None in calls:
        return None
    return content.rstrip(), calls


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position].isspace():
        position += 1
    return position


def _decode_at(text: str, position: int) -> tuple[Any, int] | None:
    try:
        return json.JSONDecoder().raw_decode(text, position)
    except ValueError:
        return None


def _calls(fmt: ToolCallFormat, value: Any) -> list[dict[str, Any]] | None:
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        arguments = item.get(fmt.arguments_key, item.get("arguments", {}))
        if isinstance(arguments, str):  # some models write the arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return None
        if not isinstance(arguments, dict):
            return None
        calls.append({"name": item["name"], "arguments": arguments})
    return calls or None


def format_tool_calls(fmt: ToolCallFormat, calls: Sequence[Mapping[str, Any]]) -> str:
    """``calls`` ([{"name", "arguments"}]) as the family's models write them: for a template
    that renders an earlier turn's calls only from the message's text."""
    objects = [{"name": call["name"], fmt.arguments_key: call["arguments"]} for call in calls]
    if fmt.json_list:
        return f"{fmt.start}{json.dumps(objects, ensure_ascii=False)}{fmt.end}"
    if not fmt.start.strip():
        return "\n".join(json.dumps(item, ensure_ascii=False) for item in objects)
    return "\n".join(f"{fmt.start}{json.dumps(item, ensure_ascii=False)}{fmt.end}" for item in objects)


def call_schema(fmt: ToolCallFormat, tools: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The JSON schema of one call to one of ``tools`` (OpenAI tool objects), in the family's keys."""
    options = []
    for tool in tools:
        function = tool["function"]
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        options.append(
            {
                "type": "object",
                "properties": {"name": {"const": function["name"]}, fmt.arguments_key: parameters},
                "required": ["name", fmt.arguments_key],
                "additionalProperties": False,
            }
        )
    return options[0] if len(options) == 1 else {"anyOf": options}


def tool_call_grammar(fmt: ToolCallFormat, tools: Sequence[Mapping[str, Any]]) -> str:
    """A Lark grammar (llguidance) whose every sentence is exactly one call to one of ``tools``.

    Special-token markers (``start_is_token``) are left out: the tokenizer's decoding drops
    them from the answer anyway, and a grammar could only name them by token id. The
    parser reads such an answer, the bare JSON, as the call.
    """
    schema = call_schema(fmt, tools)
    if fmt.json_list:
        schema = {"type": "array", "items": schema, "minItems": 1, "maxItems": 1}
    body = f"%json {json.dumps(constraint_schema(schema), ensure_ascii=False)}"
    if not fmt.start_is_token:
        if fmt.start.strip():
            body = f"{json.dumps(fmt.start, ensure_ascii=False)} {body}"
        if fmt.end.strip():
            body = f"{body} {json.dumps(fmt.end, ensure_ascii=False)}"
    return f"start: {body}\n"
