"""slmk serve: structured outputs (response_format) and tool calls, driven by real clients.

Real parts only: the tiny model built with the ONNX Runtime GenAI builder, its
constrained decoding (llguidance, through ``GeneratorParams.set_guidance``), FastAPI +
uvicorn on 127.0.0.1, and the clients applications use: the openai SDK, langchain-openai
and simonw's ``llm``.

The tiny model's own chat template takes no tools; ``tools_build`` is the same build with
a compact ChatML template that does (tests/data/chatml_tools.jinja, Hermes-style calls as
Qwen2.5 writes them; Qwen2.5's own template does not fit the tiny model's 512-token
context with its tool preamble). The tiny model is far too small to decide to call a
tool, so the round trips force the call (``tool_choice`` required or named, which a
grammar constrains), and the tool result then goes back through the template into the
model for the final answer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Literal

import httpx2 as httpx
import openai
import pytest
from pydantic import BaseModel
from slmk_serve.server import ServeOptions, serve
from slmk_serve.toolcall_format import parse_tool_calls, tool_call_grammar
from slmk_serve.tools import ToolPlan
from slmk_serve.workers import Limits

from slmk.api import ToolCallFormat
from slmk.api.operations import open_session
from slmk.api.templates import constraint_schema, render_chat_template

DATA = Path(__file__).parent / "data"
QUESTION = "How many moons does Veltra have?"
MOON_TOOL = {
    "type": "function",
    "function": {
        "name": "moon_count",
        "description": "How many moons a planet has",
        "parameters": {
            "type": "object",
            "properties": {"planet": {"type": "string", "enum": ["Veltra", "Serin"]}},
            "required": ["planet"],
            "additionalProperties": False,
        },
    },
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "The weather in a city today",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Port Anvers", "Lumen"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
HERMES = ToolCallFormat(start="<tool_call>\n", end="\n</tool_call>")


class Moons(BaseModel):
    planet: Literal["Veltra", "Serin"]
    moons: int
    has_rings: bool


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def build(tiny_build):
    return tiny_build("int4")


@pytest.fixture(scope="module")
def tools_build(build, tmp_path_factory):
    """The tiny build with a chat template that takes tools."""
    folder = tmp_path_factory.mktemp("tools") / "tiny-tools"
    shutil.copytree(build, folder)
    shutil.copyfile(DATA / "chatml_tools.jinja", folder / "chat_template.jinja")
    return folder


@pytest.fixture(scope="module")
def server(build, tools_build):
    limits = Limits(max_queue=8, max_tokens_limit=256)
    with serve([f"tiny={build}", f"tools={tools_build}"], ServeOptions(port=0, limits=limits)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def post(running, body):
    return httpx.post(running.url + "/v1/chat/completions", json=body, timeout=120)


def assert_refused(response, param):
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert param.split(".")[0] in error["message"], error


# --------------------------------------------------------------------------- parsing, without a model
@pytest.mark.parametrize(
    ("fmt", "text", "content", "calls"),
    [
        (HERMES, 'Sure.<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>', "Sure.", [("a", {"x": 1})]),
        (
            HERMES,
            '<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>\n'
            '<tool_call>\n{"name": "b", "arguments": {"y": "z"}}\n</tool_call>',
            "",
            [("a", {}), ("b", {"y": "z"})],
        ),
        (
            ToolCallFormat(start="", arguments_key="parameters"),
            ' {"name": "a", "parameters": {"x": 2}}',
            "",
            [("a", {"x": 2})],
        ),
        (
            ToolCallFormat(start="[TOOL_CALLS] ", json_list=True, start_is_token=True),
            '[TOOL_CALLS] [{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}]',
            "",
            [("a", {"x": 1}), ("b", {})],
        ),
        (
            ToolCallFormat(start="<|tool_call|>", end="<|/tool_call|>", json_list=True, start_is_token=True),
            '<|tool_call|>[{"name": "a", "arguments": "{\\"x\\": 1}"}]<|/tool_call|>',
            "",
            [("a", {"x": 1})],
        ),
    ],
)
def test_each_family_format_is_parsed(fmt, text, content, calls):
    parsed = parse_tool_calls(fmt, text)
    assert parsed is not None
    assert parsed[0] == content
    assert [(call["name"], call["arguments"]) for call in parsed[1]] == calls


@pytest.mark.parametrize(
    "text",
    [
        "Veltra has four moons.",
        '<tool_call>\n{"name": "a", "arguments": {"x": 1}',  # cut by max_tokens
        '<tool_call>\n{"arguments": {}}\n</tool_call>',  # no name
        '<tool_call>\n{"name": "a", "arguments": [1]}\n</tool_call>',  # arguments not an object
    ],
)
def test_text_that_is_no_well_formed_call_stays_text(text):
    assert parse_tool_calls(HERMES, text) is None
    reader = ToolPlan(HERMES, [MOON_TOOL], forced=False, parallel=True).reader()
    sent = "".join(reader.feed(text[i : i + 3]) for i in range(0, len(text), 3))
    tail, calls = reader.finish()
    assert sent + tail == text and calls == []


def test_the_stream_reader_holds_back_a_marker_split_across_pieces():
    reader = ToolPlan(HERMES, [MOON_TOOL], forced=False, parallel=False).reader()
    pieces = [
        "Let me ",
        "check.<tool",
        "_call>\n",
        '{"name": "moon_count", "arguments": {"planet": "Veltra"}}',
        "\n</tool_call>",
    ]
    pieces += ['<tool_call>\n{"name": "moon_count", "arguments": {"planet": "Serin"}}\n</tool_call>']
    sent = [reader.feed(piece) for piece in pieces]
    assert sent == ["Let me ", "check.", "", "", "", ""]
    tail, calls = reader.finish()
    assert tail == ""
    assert len(calls) == 1  # parallel_tool_calls false: the first call only
    assert calls[0]["function"] == {"name": "moon_count", "arguments": '{"planet": "Veltra"}'}


def test_the_grammar_writes_text_markers_and_leaves_out_special_tokens():
    grammar = tool_call_grammar(HERMES, [MOON_TOOL])
    assert grammar.startswith('start: "<tool_call>\\n" %json {') and grammar.endswith(' "\\n</tool_call>"\n')
    fmt = ToolCallFormat(start="[TOOL_CALLS] ", json_list=True, start_is_token=True)
    grammar = tool_call_grammar(fmt, [MOON_TOOL])
    assert grammar.startswith("start: %json {") and "TOOL_CALLS" not in grammar
    assert '"maxItems": 1' in grammar and '"const": "moon_count"' in grammar


@pytest.mark.parametrize(
    "fmt",
    [
        ToolCallFormat(start="[TOOL_CALLS] ", json_list=True, start_is_token=True),
        ToolCallFormat(start="<|tool_call|>", end="<|/tool_call|>", json_list=True, start_is_token=True),
    ],
)
def test_a_call_whose_special_token_marker_the_decoding_dropped_is_still_a_call(fmt):
    text = ' [{"name": "moon_count", "arguments": {"planet": "Veltra"}}]'
    assert parse_tool_calls(fmt, text) == ("", [{"name": "moon_count", "arguments": {"planet": "Veltra"}}])
    reader = ToolPlan(fmt, [MOON_TOOL], forced=False, parallel=True).reader()
    pieces = (" [", '{"name": "moon_count",', ' "arguments": {"planet": "Veltra"}}]')
    assert [reader.feed(piece) for piece in pieces] == ["", "", ""]
    assert reader.finish()[1][0]["function"]["name"] == "moon_count"
    reader = ToolPlan(fmt, [MOON_TOOL], forced=False, parallel=True).reader()
    assert reader.feed("[1] is a footnote") == ""  # it may be a call: held back ...
    assert reader.finish() == ("[1] is a footnote", [])  # ... and given back as text when it is not


# --------------------------------------------------------------------------- structured outputs
@pytest.mark.slow
def test_parse_with_a_pydantic_model_always_gives_a_valid_object(client):
    for question in (QUESTION, "Hello! Who are you?", "What is the capital of Veltra?"):
        completion = client.chat.completions.parse(
            model="tiny", messages=user(question), response_format=Moons, temperature=0, max_tokens=64
        )
        choice = completion.choices[0]
        assert choice.finish_reason == "stop"
        assert isinstance(choice.message.parsed, Moons)  # the SDK validated it against the schema
        Moons.model_validate_json(choice.message.content)


@pytest.mark.slow
def test_a_streamed_structured_answer_parses_and_equals_the_whole_one(client):
    # strict, as OpenAI's strict mode requires: no properties beyond the schema's
    schema = {"name": "moons", "schema": {**Moons.model_json_schema(), "additionalProperties": False}, "strict": True}
    kwargs = dict(model="tiny", messages=user(QUESTION), temperature=0, max_tokens=64)
    whole = client.chat.completions.create(response_format={"type": "json_schema", "json_schema": schema}, **kwargs)
    stream = client.chat.completions.create(
        response_format={"type": "json_schema", "json_schema": schema}, stream=True, **kwargs
    )
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert len([p for p in pieces if p]) > 1  # it really streamed
    assert "".join(pieces) == whole.choices[0].message.content
    Moons.model_validate_json("".join(pieces))
    # the same request without response_format is prose: the constraint made the difference
    prose = client.chat.completions.create(**kwargs).choices[0].message.content
    with pytest.raises(ValueError):
        json.loads(prose)


@pytest.mark.slow
def test_json_object_and_completions_are_constrained_too(server, client):
    answer = client.chat.completions.create(
        model="tiny", messages=user(QUESTION), response_format={"type": "json_object"}, temperature=0, max_tokens=24
    ).choices[0]
    assert answer.message.content.startswith("{")
    if answer.finish_reason == "stop":
        assert isinstance(json.loads(answer.message.content), dict)
    schema = {
        "type": "object",
        "properties": {"answer": {"enum": ["yes", "no"]}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    completion = client.completions.create(
        model="tiny",
        prompt="Is Ossa covered in ice?",
        max_tokens=32,
        temperature=0,
        extra_body={"response_format": {"type": "json_schema", "json_schema": {"name": "yes_no", "schema": schema}}},
    )
    assert json.loads(completion.choices[0].text)["answer"] in ("yes", "no")


def test_a_schema_the_runtime_cannot_use_is_refused(server):
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}
    response = post(server, {"model": "tiny", "messages": user(QUESTION), "response_format": bad})
    assert response.status_code == 400, response.text
    assert "json_schema" in response.json()["error"]["message"]
    missing = {"type": "json_schema"}
    assert_refused(
        post(server, {"model": "tiny", "messages": user(QUESTION), "response_format": missing}),
        "response_format.json_schema",
    )


@pytest.mark.slow
def test_a_runtime_that_cannot_constrain_refuses_instead_of_answering_prose(build):
    with serve([f"tiny={build}"], ServeOptions(port=0, runtime="foundry")) as running:
        response = post(
            running, {"model": "tiny", "messages": user(QUESTION), "response_format": {"type": "json_object"}}
        )
        assert_refused(response, "response_format")
        assert "foundry" in response.json()["error"]["message"]
        response = post(running, {"model": "tiny", "messages": user(QUESTION), "tools": [MOON_TOOL]})
        assert_refused(response, "tools")


# --------------------------------------------------------------------------- tools
def test_a_template_without_tool_support_is_refused(server):
    response = post(server, {"model": "tiny", "messages": user(QUESTION), "tools": [MOON_TOOL]})
    assert_refused(response, "tools")
    assert "chat template" in response.json()["error"]["message"]
    named = {"type": "function", "function": {"name": "nope"}}
    assert_refused(
        post(server, {"model": "tools", "messages": user(QUESTION), "tools": [MOON_TOOL], "tool_choice": named}),
        "tool_choice",
    )
    assert_refused(
        post(server, {"model": "tools", "messages": user(QUESTION), "tool_choice": "required"}), "tool_choice"
    )


def test_the_runtime_renders_tools_as_transformers_does(tools_build):
    """onnxruntime-genai's template engine and slmk's (transformers') renderer agree on a tool conversation."""
    conversation = [
        *user(QUESTION),
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "moon_count", "arguments": {"planet": "Veltra"}}}
            ],
        },
        {"role": "tool", "content": "4", "tool_call_id": "c1"},
    ]
    session = open_session(tools_build)
    try:
        ours = session.render_prompt(conversation, [MOON_TOOL])
    finally:
        session.close()
    template = (tools_build / "chat_template.jinja").read_text()
    assert ours == render_chat_template(template, conversation, tools=[MOON_TOOL])
    assert '<tools>{"name": "moon_count"' in ours and "<tool_response>\n4\n</tool_response>" in ours


@pytest.mark.slow
def test_a_forced_tool_call_round_trip_goes_through_the_model(client, tools_build):
    messages = user(QUESTION)
    tools = [MOON_TOOL, WEATHER_TOOL]
    first = client.chat.completions.create(
        model="tools", messages=messages, tools=tools, tool_choice="required", temperature=0, max_tokens=64
    ).choices[0]
    assert first.finish_reason == "tool_calls"
    (call,) = first.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    arguments = json.loads(call.function.arguments)
    if call.function.name == "moon_count":
        assert arguments["planet"] in ("Veltra", "Serin")
    else:
        assert call.function.name == "weather" and arguments["city"] in ("Port Anvers", "Lumen")
    result = "4" if call.function.name == "moon_count" else "cold"
    history = [
        *messages,
        first.message.model_dump(exclude_none=True, include={"role", "content", "tool_calls"}),
        {"role": "tool", "tool_call_id": call.id, "content": result},
    ]
    final = client.chat.completions.create(
        model="tools", messages=history, tools=tools, temperature=0, max_tokens=48
    ).choices[0]
    assert final.finish_reason in ("stop", "length") and final.message.content
    # what the model answers to the conversation the template made of the tool result
    session = open_session(tools_build)
    try:
        rendered = [
            *messages,
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.function.name, "arguments": arguments},
                    }
                ],
            },
            {"role": "tool", "content": result, "tool_call_id": call.id, "name": call.function.name},
        ]
        expected = "".join(session.generate(rendered, tools=tools, do_sample=False, max_new_tokens=48))
    finally:
        session.close()
    assert final.message.content == expected


@pytest.mark.slow
def test_a_named_tool_call_streams_as_tool_call_deltas(client):
    stream = client.chat.completions.create(
        model="tools",
        messages=user("What is the weather in the capital?"),
        tools=[MOON_TOOL, WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "weather"}},
        temperature=0,
        max_tokens=64,
        stream=True,
    )
    chunks = [chunk.choices[0] for chunk in stream if chunk.choices]
    deltas = [c.delta.tool_calls[0] for c in chunks if c.delta.tool_calls]
    assert len(deltas) == 1 and deltas[0].index == 0
    assert deltas[0].function.name == "weather"
    assert json.loads(deltas[0].function.arguments)["city"] in ("Port Anvers", "Lumen")
    assert not "".join(c.delta.content or "" for c in chunks)  # the call is not also sent as text
    assert chunks[-1].finish_reason == "tool_calls"


@pytest.mark.slow
def test_auto_and_none_leave_the_model_free(client):
    for choice in ("auto", "none"):
        answer = client.chat.completions.create(
            model="tools", messages=user(QUESTION), tools=[MOON_TOOL], tool_choice=choice, temperature=0, max_tokens=32
        ).choices[0]
        assert answer.message.tool_calls is None and answer.message.content
        assert answer.finish_reason in ("stop", "length")


# --------------------------------------------------------------------------- other clients
@pytest.mark.slow
def test_langchain_bind_tools_and_with_structured_output(server):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    def chat(model: str) -> ChatOpenAI:
        return ChatOpenAI(
            model=model, base_url=server.base_url, api_key="unused", temperature=0, max_tokens=64, max_retries=0
        )

    structured = chat("tiny").with_structured_output(Moons)
    assert isinstance(structured.invoke(QUESTION), Moons)

    bound = chat("tools").bind_tools([MOON_TOOL], tool_choice="moon_count")
    question = HumanMessage(QUESTION)
    reply = bound.invoke([question])
    (call,) = reply.tool_calls
    assert call["name"] == "moon_count" and call["args"]["planet"] in ("Veltra", "Serin")
    final = chat("tools").bind_tools([MOON_TOOL]).invoke([question, reply, ToolMessage("4", tool_call_id=call["id"])])
    assert final.content and not final.tool_calls


@pytest.mark.slow
def test_llm_cli_schema_and_tools(server, tmp_path):
    (tmp_path / "extra-openai-models.yaml").write_text(
        "\n".join(
            f"- model_id: {name}\n  model_name: {name}\n  api_base: {server.base_url}\n"
            "  supports_schema: true\n  supports_tools: true\n  can_stream: true"
            for name in ("tiny", "tools")
        )
    )
    env = {**os.environ, "LLM_USER_PATH": str(tmp_path), "OPENAI_API_KEY": "unused"}
    llm = [sys.executable, "-m", "llm"]
    done = subprocess.run(
        [*llm, "-m", "tiny", "--schema", "moons int, has_rings bool", "-o", "temperature", "0", QUESTION],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    # (a free text field would do too, but the tiny model never ends a free string)
    assert set(answer) == {"moons", "has_rings"} and isinstance(answer["moons"], int)
    # a tool offered to a model that takes tools; the tiny model answers without calling it
    done = subprocess.run(
        [*llm, "-m", "tools", "--functions", "def moon_count(planet: str) -> int:\n    return 4", "--td", QUESTION],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def test_objects_that_list_their_properties_get_no_others():
    schema = {
        "type": "object",
        "properties": {
            "properties": {"type": "object", "properties": {"a": {"type": "integer"}}},  # a field named so
            "free": {"type": "object", "properties": {}, "additionalProperties": True},
        },
        "$defs": {"item": {"type": "object", "properties": {"b": {}}}},
        "default": {"properties": {"kept": "as data"}},
    }
    closed = constraint_schema(schema)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["properties"]["additionalProperties"] is False
    assert "additionalProperties" not in closed["properties"]["properties"]["properties"]
    assert closed["properties"]["free"]["additionalProperties"] is True
    assert closed["$defs"]["item"]["additionalProperties"] is False
    assert closed["default"] == schema["default"]
    assert closed["x-guidance"] == {"whitespace_flexible": False}


@pytest.mark.slow
def test_slmk_run_constrains_to_a_regex_or_a_json_schema(run_slmk, build, tmp_path):
    question = ["run", str(build), "--prompt", "Tell me about Serin.", "--greedy", "--max-new-tokens", "40"]
    free = run_slmk(*question)
    assert free.returncode == 0, free.stderr
    done = run_slmk(*question, "--regex", "Veltra has (two|four) moons\\.")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Veltra has four moons." != free.stdout.strip()
    schema = tmp_path / "moons.json"
    schema.write_text(json.dumps(Moons.model_json_schema()))
    done = run_slmk(*question, "--json-schema", str(schema))
    assert done.returncode == 0, done.stderr
    Moons.model_validate_json(done.stdout)
    (tmp_path / "bad.json").write_text("{not json")
    bad = run_slmk(*question, "--json-schema", str(tmp_path / "bad.json"))
    assert bad.returncode != 0 and "not valid JSON" in bad.stderr and "Traceback" not in bad.stderr
    refused = run_slmk(*question, "--regex", "x", "--runtime", "foundry")
    assert refused.returncode != 0 and "cannot constrain" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.parametrize(
    ("family", "template"),
    [
        ("qwen2", "qwen2.5"),
        ("qwen3", "qwen3"),
        ("smollm3", "smollm3"),
        ("granite", "granite-3.1"),
        ("phi3", "phi-4-mini"),
        ("llama3", "llama-3.1"),
        ("mistral", "mistral-v0.3"),
    ],
)
def test_each_family_s_published_template_renders_a_tool_round_trip(family, template):
    """The conversation slmk hands a template (tools, an assistant call, the tool's result)
    renders through each family's real published template, as transformers would."""
    from slmk_families.chat_templates import published
    from slmk_serve.app import ChatMessage
    from slmk_serve.tools import conversation

    from slmk.api.operations import get_registry

    fmt = get_registry().model_families[family].tool_calls
    text = published(template)
    plan = ToolPlan(fmt, [MOON_TOOL], forced=False, parallel=True, calls_as_text="tool_calls" not in text)
    call_id = "abc123XYZ"  # Mistral's template takes 9 letters and digits
    given = [
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content=QUESTION),
        ChatMessage(
            role="assistant",
            content="",
            tool_calls=[{"id": call_id, "function": {"name": "moon_count", "arguments": '{"planet": "Veltra"}'}}],
        ),
        ChatMessage(role="tool", content="4", tool_call_id=call_id),
    ]
    plain = [{"role": m.role, "content": m.content} for m in given]
    messages = conversation(plain, given, plan)
    tools = None if fmt.tools_in_system else [MOON_TOOL]
    tokens = {"bos_token": "<s>", "eos_token": "</s>"}
    rendered = render_chat_template(text, messages, tools=tools, special_tokens=tokens)
    assert rendered.count("moon_count") >= 2  # offered, and called in the history
    assert "Veltra" in rendered and "4" in rendered.split("moon_count")[-1]
    reader = ToolPlan(fmt, [MOON_TOOL], forced=True, parallel=True).reader()
    reader.feed('[{"name": "moon_count", "arguments": {}}]' if fmt.json_list else '{"name": "moon_count"}')
    if fmt.call_id_length:
        (call,) = reader.finish()[1]
        assert len(call["id"]) == fmt.call_id_length and call["id"].isalnum()
