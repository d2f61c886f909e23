"""slmk serve as applications use it: logprobs, echo, refused fields, metrics, latency, hardening.

Real parts only: the tiny model built with the ONNX Runtime GenAI builder, the ortgenai
(and foundry) runtime, FastAPI + uvicorn on 127.0.0.1, the openai package and raw HTTP.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import socket
import statistics
import time

import httpx2 as httpx
import openai
import pytest
from slmk_serve.app import UNSUPPORTED_CHAT, UNSUPPORTED_COMPLETIONS, public_message
from slmk_serve.server import ServeOptions, serve
from slmk_serve.workers import Limits
from test_serve import holding_the_batch

from slmk.api import SlmkError
from slmk.api.operations import open_session

QUESTION = "How many moons does Veltra have?"
TEXT = "Veltra has four moons: Ossa, Pell, Tirra and Quell."


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def build(tiny_build):
    return tiny_build("int4")


@pytest.fixture(scope="module")
def session(build):
    opened = open_session(build)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def server(build):
    with serve([f"tiny={build}"], ServeOptions(port=0, limits=Limits(max_tokens_limit=64))) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def post(running, path, body, **kwargs):
    content = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    headers = {"content-type": "application/json", **kwargs.pop("headers", {})}
    return httpx.post(running.url + path, content=content, headers=headers, timeout=120, **kwargs)


def refused(response, param, status=400):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert error["type"] == "invalid_request_error"
    return error["message"]


# --------------------------------------------------------------------------- logprobs
def test_chat_logprobs_are_the_models_own_for_each_answer_token(client, session):
    reply = client.chat.completions.create(
        model="tiny", messages=user(QUESTION), temperature=0, max_tokens=24, logprobs=True, top_logprobs=3
    )
    answer = reply.choices[0].message.content
    items = reply.choices[0].logprobs.content
    assert "".join(item.token for item in items) == answer  # the end token is listed, with no text
    assert len(items) == reply.usage.completion_tokens
    # greedy: each chosen token is the likeliest of its alternatives
    for item in items:
        assert len(item.top_logprobs) == 3
        assert item.top_logprobs[0].logprob == pytest.approx(item.logprob)
        assert item.logprob <= 0 and bytes(item.bytes).decode() == item.token
    # the same figures as teacher-forcing the prompt and answer through the in-process session
    prompt_ids = session.encode(session.render_prompt(user(QUESTION)))
    list(session.generate(user(QUESTION), do_sample=False, max_new_tokens=24))
    forced = session.prompt_logprobs(prompt_ids + session.last_token_ids)[len(prompt_ids) :]
    assert [item.logprob for item in items] == pytest.approx([e["logprob"] for e in forced], abs=1e-4)

    stream = client.chat.completions.create(
        model="tiny", messages=user(QUESTION), temperature=0, max_tokens=24, logprobs=True, stream=True
    )
    streamed = [item for chunk in stream for c in chunk.choices if c.logprobs for item in c.logprobs.content]
    assert [(i.token, i.logprob) for i in streamed] == [(i.token, i.logprob) for i in items]
    assert all(i.top_logprobs == [] for i in streamed)  # top_logprobs left out: none


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["int4", "fp32"])
def test_prompt_logprobs_equal_score_token_by_token_or_in_chunks(tiny_build, precision):
    """int4 prunes the output layer (last position's logits only: fed a token a call); fp32
    gives every position's (fed 128 a call): both give score's sums, for more than a chunk."""
    scored = open_session(tiny_build(precision))
    try:
        text = (TEXT + " ") * 12
        ids = scored.encode(text)
        assert len(ids) > 128
        entries = scored.prompt_logprobs(ids, 2)
        nll, count = scored.score(text)
        assert [e["id"] for e in entries] == ids and entries[0]["logprob"] is None
        assert -sum(e["logprob"] for e in entries[1:]) == pytest.approx(nll, rel=1e-9)
        assert count == len(ids) - 1
        assert all(e["logprob"] <= e["top"][0][3] + 1e-9 for e in entries[1:])  # the likeliest is first
        assert scored.last_stats.prompt_tokens == len(ids) and scored.last_stats.generated_tokens == 0
    finally:
        scored.close()


@pytest.mark.slow
def test_completions_echo_scores_a_token_id_prompt_as_score_does(server, session):
    ids = session.encode(TEXT)
    nll, scored = session.score(TEXT)
    for prompt in (ids, [ids]):  # a batch of one, as lm-evaluation-harness sends it
        reply = post(
            server, "/v1/completions", {"model": "tiny", "prompt": prompt, "max_tokens": 0, "echo": True, "logprobs": 2}
        )
        assert reply.status_code == 200, reply.text
        choice = reply.json()["choices"][0]
        logprobs = choice["logprobs"]
        assert choice["text"] == TEXT and choice["finish_reason"] == "length"
        assert "".join(logprobs["tokens"]) == TEXT
        assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
        assert len(logprobs["token_logprobs"]) == len(ids) == scored + 1
        assert -sum(logprobs["token_logprobs"][1:]) == pytest.approx(nll, rel=1e-9)
        assert all(len(top) <= 2 for top in logprobs["top_logprobs"][1:])
        assert logprobs["text_offset"][:2] == [0, len(logprobs["tokens"][0])]
        assert reply.json()["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 0, "total_tokens": len(ids)}
    # max_tokens 1: the prompt's entries, then the generated token's (lm-eval drops that last one)
    one = post(
        server, "/v1/completions", {"model": "tiny", "prompt": [ids], "max_tokens": 1, "echo": True, "logprobs": 1}
    )
    logprobs = one.json()["choices"][0]["logprobs"]
    assert len(logprobs["token_logprobs"]) == len(ids) + 1
    assert -sum(logprobs["token_logprobs"][1:-1]) == pytest.approx(nll, rel=1e-9)
    # without echo, a token-id prompt is answered as is (no chat template), like generate_ids
    plain = post(server, "/v1/completions", {"model": "tiny", "prompt": ids[:5], "max_tokens": 4, "temperature": 0})
    expected = "".join(session.generate_ids(ids[:5], do_sample=False, max_new_tokens=4))
    assert plain.json()["choices"][0]["text"] == expected
    streamed = httpx.post(
        server.url + "/v1/completions",
        json={"model": "tiny", "prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 0, "stream": True},
        timeout=60,
    )
    chunks = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
    assert chunks[0]["choices"][0]["text"] == TEXT
    assert chunks[0]["choices"][0]["logprobs"]["token_logprobs"][1:] == pytest.approx(logprobs["token_logprobs"][1:-1])


def test_bad_logprobs_requests_are_refused_naming_the_field(server, session):
    ids = session.encode(TEXT)
    chat = {"model": "tiny", "messages": user("hi"), "max_tokens": 2}
    refused(post(server, "/v1/chat/completions", {**chat, "top_logprobs": 2}), "top_logprobs")
    refused(post(server, "/v1/chat/completions", {**chat, "logprobs": True, "top_logprobs": 21}), "top_logprobs")
    body = {"model": "tiny", "max_tokens": 0, "echo": True}
    refused(post(server, "/v1/completions", {**body, "prompt": [ids, ids]}), "prompt")
    refused(post(server, "/v1/completions", {**body, "prompt": [ids[0], 10**6]}), "prompt")
    refused(post(server, "/v1/completions", {**body, "prompt": []}), "prompt")
    refused(post(server, "/v1/completions", {**body, "prompt": ids, "logprobs": 21}), "logprobs")
    refused(post(server, "/v1/completions", {**body, "prompt": "hi", "echo": False}), "max_tokens")


def test_runtimes_without_logprobs_refuse_them_by_name(build):
    with serve([f"tiny={build}"], ServeOptions(port=0, runtime="foundry")) as running:
        chat = {"model": "tiny", "messages": user("hi"), "max_tokens": 2}
        assert "foundry" in refused(post(running, "/v1/chat/completions", {**chat, "logprobs": True}), "logprobs")
        completion = {"model": "tiny", "prompt": "hi", "max_tokens": 0, "echo": True}
        refused(post(running, "/v1/completions", completion), "echo")
        refused(
            post(running, "/v1/completions", {**completion, "prompt": [1, 2], "echo": False, "max_tokens": 2}), "prompt"
        )
        # issue 19: what Foundry Local refuses is the request's fault: 400, not 500
        refused(post(running, "/v1/chat/completions", {**chat, "messages": user("")}), None)
        refused(post(running, "/v1/chat/completions", {**chat, "messages": [{"role": "user", "content": None}]}), None)
        refused(post(running, "/v1/chat/completions", {**chat, "messages": user("\x00\x00")}), "messages.0.content")
        refused(post(running, "/v1/chat/completions", {**chat, "top_p": 1e-300}), "top_p")
        assert "32-bit" in refused(post(running, "/v1/chat/completions", {**chat, "temperature": 1e-300}), None)
        assert post(running, "/v1/chat/completions", chat).status_code == 200


# --------------------------------------------------------------------------- nothing silently ignored
ASKING = {
    "n": 2,
    "presence_penalty": 0.5,
    "frequency_penalty": 0.5,
    "logit_bias": {"5": 10},
    "functions": [{"name": "f", "parameters": {}}],
    "function_call": "auto",
    "response_format": {"type": "json_object"},
    "tools": [{"type": "function", "function": {"name": "f"}}],
    "tool_choice": "required",
    "parallel_tool_calls": True,
    "service_tier": "flex",
    "modalities": ["text", "audio"],
    "audio": {"voice": "alloy", "format": "wav"},
    "prediction": {"type": "content", "content": "x"},
    "store": True,
    "reasoning_effort": "high",
    "verbosity": "low",
    "web_search_options": {"search_context_size": "low"},
    "best_of": 3,
    "suffix": "end",
}
HARMLESS = {
    "n": 1,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logit_bias": {},
    "functions": [],
    "function_call": "none",
    "response_format": {"type": "text"},
    "tools": [],
    "tool_choice": "none",
    "parallel_tool_calls": None,
    "service_tier": "auto",
    "modalities": ["text"],
    "audio": None,
    "prediction": None,
    "store": False,
    "reasoning_effort": None,
    "verbosity": None,
    "web_search_options": None,
    "best_of": 1,
    "suffix": "",
}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "table", "base"),
    [
        ("/v1/chat/completions", UNSUPPORTED_CHAT, {"model": "tiny", "messages": user("hi"), "max_tokens": 2}),
        ("/v1/completions", UNSUPPORTED_COMPLETIONS, {"model": "tiny", "prompt": "hi", "max_tokens": 2}),
    ],
)
def test_every_field_is_honoured_or_refused_by_name(server, path, table, base):
    assert set(table) <= set(ASKING) and set(table) <= set(HARMLESS)
    for field in table:
        message = refused(post(server, path, {**base, field: ASKING[field]}), field)
        assert field in message
        harmless = post(server, path, {**base, field: HARMLESS[field]})
        assert harmless.status_code == 200, (field, harmless.text)
    # harmless metadata passes; a field OpenAI does not define is refused, as OpenAI refuses it
    assert post(server, path, {**base, "user": "u-1", "metadata": {"k": "v"}}).status_code == 200
    assert "nonsense" in refused(post(server, path, {**base, "nonsense": 1}), "nonsense")
    assert post(server, path, {**base, "seed": 7, "top_k": 5, "temperature": 0.7}).status_code == 200


def test_unknown_fields_inside_messages_are_refused(server):
    # (``name`` is a field since tool calls: the template may read a participant's name)
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi", "nickname": "bob"}], "max_tokens": 2}
    refused(post(server, "/v1/chat/completions", body), "messages.0.nickname")
    body = {"model": "tiny", "messages": user("hi"), "stream": True, "stream_options": {"include_obfuscation": True}}
    refused(post(server, "/v1/chat/completions", body), "stream_options.include_obfuscation")


# --------------------------------------------------------------------------- issue 19: 400, not 500
def test_out_of_range_values_and_bad_text_get_400_naming_the_field(server):
    chat = {"model": "tiny", "messages": user("hi"), "max_tokens": 2}
    for top_k in (1e12, 2**63, 937):  # the tiny model's vocabulary has 936 tokens
        refused(post(server, "/v1/chat/completions", {**chat, "top_k": top_k}), "top_k")
    assert post(server, "/v1/chat/completions", {**chat, "top_k": 936}).status_code == 200
    refused(post(server, "/v1/chat/completions", {**chat, "seed": 2**70}), "seed")
    refused(post(server, "/v1/chat/completions", {**chat, "seed": 2**31}), "seed")  # the runtime's seeds are 32-bit
    surrogate = b'{"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "a\\ud800b"}]}'
    assert "surrogate" in refused(post(server, "/v1/chat/completions", surrogate), "messages.0.content")
    refused(post(server, "/v1/chat/completions", {**chat, "stop": "\udfff"}), "stop")
    refused(post(server, "/v1/completions", {"model": "tiny", "prompt": "\x00"}), "prompt")
    assert server.wait_idle(30)
    assert all(w.outcomes.get("error", 0) == 0 for w in server.workers.values())


def test_error_messages_carry_no_hints_paths_or_repeats(server):
    worker = server.workers["tiny"]
    error = SlmkError(f"generation failed: cannot read {worker.folder}/model.onnx", hint="rebuild with `slmk convert`")
    message = public_message(error, worker)
    assert message == "generation failed: cannot read model tiny/model.onnx"
    from slmk_serve.app import _generation_failed

    assert _generation_failed(error, worker).count("generation failed") == 1
    long_prompt = post(server, "/v1/chat/completions", {"model": "tiny", "messages": user("word " * 1000)})
    text = long_prompt.json()["error"]["message"]
    assert long_prompt.status_code == 400 and "truncate" not in text and str(worker.folder) not in text


@pytest.mark.slow
def test_the_api_key_guards_every_route_before_the_body_is_read(build):
    key = "clé-ключ-🔑"  # non-ASCII: clients send it as UTF-8 bytes
    with serve([f"tiny={build}"], ServeOptions(port=0, api_key=key)) as running:
        assert httpx.get(running.url + "/health").status_code == 200
        for path in ("/openapi.json", "/metrics", "/v1/models", "/docs"):
            assert httpx.get(running.url + path).status_code == 401, path
        garbage = post(running, "/v1/chat/completions", b'{"model": ')
        assert garbage.status_code == 401 and garbage.json()["error"]["code"] == "invalid_api_key"
        good = {"authorization": b"Bearer " + key.encode("utf-8")}
        assert httpx.get(running.url + "/openapi.json", headers=good).status_code == 200
        assert post(running, "/v1/chat/completions", b'{"model": ', headers=good).status_code == 400
        wrong = {"authorization": b"Bearer " + key.encode("latin-1", "replace")}
        assert httpx.get(running.url + "/v1/models", headers=wrong).status_code == 401
        body = {"model": "tiny", "messages": user("hi"), "max_tokens": 2}
        assert post(running, "/v1/chat/completions", body, headers=good).status_code == 200


# --------------------------------------------------------------------------- latency
def test_accepted_connections_have_tcp_nodelay(server):
    """Without TCP_NODELAY every request on a kept-alive connection waited ~40 ms (delayed ACK)."""
    connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
    kept_alive, fresh = [], []
    try:
        for _ in range(10):
            started = time.perf_counter()
            connection.request("GET", "/v1/models")
            connection.getresponse().read()
            kept_alive.append(time.perf_counter() - started)
        client_port = connection.sock.getsockname()[1]
        uvicorn_server = server._server
        sockets = [
            c.transport.get_extra_info("socket")
            for c in uvicorn_server.server_state.connections
            if c.transport is not None and c.transport.get_extra_info("peername")[1] == client_port
        ]
        assert len(sockets) == 1
        assert sockets[0].getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        connection.close()
    for _ in range(10):
        single = http.client.HTTPConnection(server.host, server.port, timeout=30)
        started = time.perf_counter()
        single.request("GET", "/v1/models")
        single.getresponse().read()
        fresh.append(time.perf_counter() - started)
        single.close()
    # a figure, not a threshold: benchmarks/serve_keepalive.py measures it properly
    print(
        f"GET /v1/models median: kept-alive {statistics.median(kept_alive) * 1000:.2f} ms, "
        f"fresh {statistics.median(fresh) * 1000:.2f} ms"
    )


# --------------------------------------------------------------------------- observability
def test_metrics_health_and_the_request_log_line(build, caplog):
    caplog.set_level(logging.INFO, logger="slmk.serve")
    limits = Limits(max_batch=1, max_queue=1, queue_timeout_s=0.2)
    with serve([f"tiny={build}"], ServeOptions(port=0, limits=limits, log_level="info")) as running:
        body = {"model": "tiny", "messages": user(QUESTION), "max_tokens": 8, "temperature": 0}
        reply = post(running, "/v1/chat/completions", body).json()
        with holding_the_batch(running, "tiny"):
            busy = post(running, "/v1/chat/completions", body)  # waits 0.2 s for a place in the batch
        assert running.wait_idle(30)
        assert busy.status_code == 503
        assert httpx.get(running.url + "/health").json()["models"]["tiny"]["rejected"] == {"queue_timeout": 1}
        text = httpx.get(running.url + "/metrics").text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples['slmk_requests_total{method="POST",route="/v1/chat/completions",status="200"}'] == 1
    assert samples['slmk_requests_total{method="POST",route="/v1/chat/completions",status="503"}'] == 1
    assert samples['slmk_rejected_total{model="tiny",code="queue_timeout"}'] == 1
    assert samples['slmk_prompt_tokens_total{model="tiny"}'] == reply["usage"]["prompt_tokens"]
    assert samples['slmk_completion_tokens_total{model="tiny"}'] == reply["usage"]["completion_tokens"]
    assert samples['slmk_time_to_first_token_seconds_count{model="tiny"}'] == 1
    assert samples['slmk_time_to_first_token_seconds_bucket{model="tiny",le="+Inf"}'] == 1
    assert samples['slmk_request_duration_seconds_count{route="/v1/chat/completions"}'] == 2
    assert samples['slmk_queue_depth{model="tiny"}'] == 0
    assert "# TYPE slmk_time_to_first_token_seconds histogram" in text
    lines = [r.getMessage() for r in caplog.records if "/v1/chat/completions" in r.getMessage()]
    assert len(lines) == 2, lines
    ok = lines[0]
    assert " 200 model=tiny " in ok and f"prompt_tokens={reply['usage']['prompt_tokens']}" in ok
    assert f"completion_tokens={reply['usage']['completion_tokens']}" in ok and "ttft_ms=" in ok and "total_ms=" in ok
    assert " 503 " in lines[1]
    ttft = float(ok.split("ttft_ms=")[1].split()[0])
    assert 0 < ttft <= float(ok.split("total_ms=")[1].split()[0])
    assert not math.isnan(ttft)


def test_cors_is_off_unless_an_origin_is_given(build, server):
    preflight = {"origin": "http://app.test", "access-control-request-method": "POST"}
    assert "access-control-allow-origin" not in httpx.options(server.url + "/v1/models", headers=preflight).headers
    with serve([f"tiny={build}"], ServeOptions(port=0, api_key="k", cors_origins=["http://app.test"])) as running:
        answer = httpx.options(
            running.url + "/v1/chat/completions",
            headers={**preflight, "access-control-request-headers": "authorization,content-type"},
        )
        assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "http://app.test"
        denied = httpx.get(running.url + "/v1/models", headers={"origin": "http://app.test"})
        assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == "http://app.test"
        other = httpx.options(running.url + "/v1/models", headers={**preflight, "origin": "http://evil.test"})
        assert "access-control-allow-origin" not in other.headers


def test_a_key_a_header_cannot_carry_is_refused_at_start_up(build):
    from slmk.api import UsageError

    for key in ("two words", "tab\tkey", "   "):
        with pytest.raises(UsageError):
            serve([f"tiny={build}"], ServeOptions(port=0, api_key=key))


def test_the_runtime_refuses_what_onnxruntime_genai_cannot_take_before_generating(session):
    from slmk.api import UsageError

    for options, needle in (
        ({"random_seed": 2**31}, "random_seed"),
        ({"top_k": 2**31}, "top_k"),
        ({"top_k": session.vocab_size + 1}, "vocabulary"),
        ({"logprobs": 21}, "logprobs"),
        ({"logprobs": True}, "logprobs"),
    ):
        with pytest.raises(UsageError, match=needle):
            session.generate(user("hi"), max_new_tokens=2, **options)
    assert "".join(session.generate(user("hi"), max_new_tokens=2, random_seed=-(2**31), top_k=session.vocab_size))
