"""Tool calling, OpenAI style, through each model family's own format.

The tools reach the model through its chat template (the ``tools`` variable, or the system
message for a family that reads them there); the answer is parsed by the family's
``ToolCallFormat``. ``tool_choice: "required"`` or a named function constrains decoding
with a grammar of exactly one call, so the call is always well-formed JSON whose
arguments match the function's parameters. ``tool_choice: "none"`` leaves the tools out
of the prompt (the model cannot call what it is not shown).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from slmk.api import ModelInfo, SlmkError, ToolCallFormat
from slmk.api.operations import get_registry
from slmk.api.templates import resolve_family

from .toolcall_format import format_tool_calls, parse_tool_calls, tool_call_grammar
from .workers import ModelWorker, Refused

FUNCTION_NAME = r"^[A-Za-z0-9_.\-]{1,64}$"


# --------------------------------------------------------------------------- request schemas
class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None  # forced calls are always constrained to the parameters


class ToolDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: FunctionName


class CalledFunction(BaseModel):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class MessageToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


# --------------------------------------------------------------------------- the plan
@dataclass
class ToolPlan:
    """How one request uses its tools: what the runtime gets and how the answer is read."""

    fmt: ToolCallFormat
    tools: list[dict[str, Any]]
    forced: bool  # required or named: the answer is one call, by grammar
    parallel: bool
    calls_as_text: bool = False  # the template renders an earlier turn's calls only from its text
    search: dict[str, Any] = field(default_factory=dict)  # tools / guidance for the runtime

    def reader(self) -> ToolCallReader:
        return ToolCallReader(self)


@lru_cache(maxsize=64)
def _family_of(folder: Path) -> tuple[str, ToolCallFormat | None, str]:
    """(family name, its tool-call format, the build's chat template)."""
    try:
        info = ModelInfo.load(folder)
    except SlmkError:
        return "unknown", None, ""
    family = resolve_family(get_registry(), info)
    if family is None:
        return "unknown", None, ""
    return family.name, family.tool_calls, info.chat_template or ""


def plan_tools(
    worker: ModelWorker,
    tools: list[ToolDefinition] | None,
    tool_choice: ToolChoice | None,
    parallel_tool_calls: bool | None,
) -> ToolPlan | None:
    """The plan for this request's tools (None: answer without tools), or a 400."""
    if not tools:
        if tool_choice not in (None, "none"):
            raise Refused(400, "tool_choice needs tools", code="invalid_value", param="tool_choice")
        return None
    if tool_choice == "none":
        return None
    if not getattr((getattr(worker, "sessions", None) or [None])[0], "takes_tools", False):
        raise Refused(
            400,
            f"tools: the {worker.runtime} runtime serving {worker.name} cannot pass tools to the model",
            code="unsupported_parameter",
            param="tools",
        )
    family, fmt, template = _family_of(Path(worker.folder))
    if fmt is None or "tools" not in template:
        why = (
            "its chat template has no tool support"
            if fmt
            else f"slmk knows no tool-call format for its family ({family})"
        )
        raise Refused(
            400,
            f"tools: model {worker.name} cannot call tools: {why}",
            code="unsupported_parameter",
            param="tools",
        )
    definitions = [tool.model_dump(exclude_none=True) for tool in tools]
    names = [tool.function.name for tool in tools]
    if len(set(names)) != len(names):
        raise Refused(400, "tools: two tools have one name", code="invalid_value", param="tools")
    plan = ToolPlan(
        fmt,
        definitions,
        forced=tool_choice not in (None, "auto"),
        parallel=parallel_tool_calls is not False,
        calls_as_text="tool_calls" not in template,
    )
    if isinstance(tool_choice, NamedToolChoice):
        if tool_choice.function.name not in names:
            raise Refused(
                400,
                f"tool_choice names {tool_choice.function.name!r}, which is not among the tools ({', '.join(names)})",
                code="invalid_value",
                param="tool_choice",
            )
        chosen = [d for d in definitions if d["function"]["name"] == tool_choice.function.name]
        plan.search["guidance"] = ("lark_grammar", tool_call_grammar(fmt, chosen))
    elif tool_choice == "required":
        plan.search["guidance"] = ("lark_grammar", tool_call_grammar(fmt, definitions))
    if not fmt.tools_in_system:
        plan.search["tools"] = definitions
    return plan


def conversation(messages: list[dict[str, Any]], raw: list[Any], plan: ToolPlan | None) -> list[dict[str, Any]]:
    """The messages as chat templates read them: assistant ``tool_calls`` with their arguments
    as objects (templates write them with ``tojson``), tool results with the call's id and name."""
    names: dict[str, str] = {}
    out = []
    for index, (message, given) in enumerate(zip(messages, raw)):
        message = dict(message)
        calls = getattr(given, "tool_calls", None)
        if calls:
            message["tool_calls"] = []
            for number, call in enumerate(calls):
                try:
                    arguments = json.loads(call.function.arguments or "{}")
                except ValueError:
                    arguments = None
                if not isinstance(arguments, dict):
                    raise Refused(
                        400,
                        f"messages.{index}.tool_calls.{number}.function.arguments is not a JSON object",
                        code="invalid_value",
                        param=f"messages.{index}.tool_calls.{number}.function.arguments",
                    )
                names[call.id] = call.function.name
                message["tool_calls"].append(
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.function.name, "arguments": arguments},
                    }
                )
            if plan is not None and plan.calls_as_text:
                written = [call["function"] for call in message["tool_calls"]]
                message["content"] = (message.get("content") or "") + format_tool_calls(plan.fmt, written)
        if message["role"] == "tool":
            call_id = getattr(given, "tool_call_id", None)
            if not call_id:
                raise Refused(
                    400, f"messages.{index}: a tool message needs tool_call_id", param=f"messages.{index}.tool_call_id"
                )
            message["tool_call_id"] = call_id
        name = getattr(given, "name", None) or (names.get(message.get("tool_call_id", "")))
        if name:  # a participant's name, or the tool's: templates that read message.name get it
            message["name"] = name
        out.append(message)
    if plan is not None and plan.fmt.tools_in_system:
        listed = json.dumps([tool["function"] for tool in plan.tools], ensure_ascii=False)
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "tools": listed}
        else:
            out.insert(0, {"role": "system", "content": "", "tools": listed})
    return out


# --------------------------------------------------------------------------- the answer
class ToolCallReader:
    """Splits an answer, as it streams, into text for the client and the tool calls.

    Text that may begin a call is held back until it is clear; once a call begins, the
    rest is kept and parsed when the answer ends. An answer that turns out not to be a
    well-formed call is given back as text.
    """

    def __init__(self, plan: ToolPlan):
        self.plan = plan
        self.marker = plan.fmt.start.strip()
        # No text marker to wait for (Llama 3's bare JSON), or one the decoding may drop (a
        # special token): an answer that opens with JSON is read as a call.
        self.bare = not self.marker or plan.fmt.start_is_token
        self.held = ""
        self.capturing = plan.forced
        self.decided = plan.forced or not self.bare  # bare formats: is the answer a call or text?

    def feed(self, piece: str) -> str:
        """The text the client may have now."""
        self.held += piece
        if self.capturing:
            return ""
        if not self.decided:
            stripped = self.held.lstrip()
            if not stripped or (self.marker.startswith(stripped) and stripped != self.marker):
                return ""  # nothing yet, or maybe the marker as text
            self.decided = True
            self.capturing = stripped[0] in "{["
            if self.capturing:
                return ""
        if not self.marker:
            out, self.held = self.held, ""
            return out
        at = self.held.find(self.marker)
        if at >= 0:
            self.capturing = True
            out, self.held = self.held[:at], self.held[at:]
            return out
        keep = next((n for n in range(len(self.marker) - 1, 0, -1) if self.held.endswith(self.marker[:n])), 0)
        out, self.held = self.held[: len(self.held) - keep], self.held[len(self.held) - keep :]
        return out

    def _call_id(self) -> str:
        length = self.plan.fmt.call_id_length
        return uuid.uuid4().hex[:length] if length else f"call_{uuid.uuid4().hex[:24]}"

    def finish(self) -> tuple[str, list[dict[str, Any]]]:
        """(the text still owed to the client, the calls in OpenAI's form; [] for none)."""
        text, self.held = self.held, ""
        parsed = parse_tool_calls(self.plan.fmt, text) if self.capturing else None
        if not parsed:
            return text, []
        content, calls = parsed
        if not self.plan.parallel:
            calls = calls[:1]  # parallel_tool_calls: false, and the model wrote several
        return content, [
            {
                "id": self._call_id(),
                "type": "function",
                "function": {"name": call["name"], "arguments": json.dumps(call["arguments"], ensure_ascii=False)},
            }
            for call in calls
        ]
