"""slmk serve: the OpenAI-compatible endpoint, driven by the official openai client and raw HTTP.

Real parts only: the tiny model built with the ONNX Runtime GenAI builder, the ortgenai
runtime, FastAPI + uvicorn on 127.0.0.1 (ephemeral ports), the openai package.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import httpx2 as httpx
import openai
import pytest
from _signals import default_signals
from slmk_serve.server import ServeOptions, is_loopback, parse_target, serve
from slmk_serve.stops import StopScanner
from slmk_serve.workers import MAX_AHEAD, BatchWorker, Job, Limits, ModelWorker

from slmk.api import LoadRequest, UsageError
from slmk.api.operations import get_registry, open_session, resolve_ep

QUESTIONS = ["How many moons does Veltra have?", "Hello! Who are you?", "What is the capital of Veltra?"]
ANSWER_TOKENS = 48
MAX_TOKENS_LIMIT = 480
BODY_LIMIT = 64 * 1024


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def build(tiny_build):
    return tiny_build("int4")


class Answer(NamedTuple):
    text: str
    prompt_tokens: int
    generated_tokens: int
    pieces: list[str]


@pytest.fixture(scope="module")
def reference(build):
    """The in-process runtime's greedy answers, pieces and token counts, to compare the server with."""
    session = open_session(build)
    answers = {}
    try:
        for question in QUESTIONS:
            pieces = list(session.generate(user(question), do_sample=False, max_new_tokens=ANSWER_TOKENS))
            stats = session.last_stats
            answers[question] = Answer("".join(pieces), stats.prompt_tokens, stats.generated_tokens, pieces)
    finally:
        session.close()
    return answers


@pytest.fixture(scope="module")
def server(build):
    limits = Limits(max_queue=8, max_tokens_limit=MAX_TOKENS_LIMIT, max_body_bytes=BODY_LIMIT)
    with serve([str(build), f"second={build}"], ServeOptions(port=0, limits=limits)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def model_of(build) -> str:
    return build.name


@contextmanager
def holding_the_batch(running, name):
    """Fill the model's only batch place with a request whose client never reads, and end it after."""
    worker = running.workers[name]
    assert isinstance(worker, BatchWorker) and worker.max_batch == 1
    job = Job(user("hi"), {"max_new_tokens": 450}, min_tokens=450)
    asyncio.run_coroutine_threadsafe(worker.start(job), worker._loop).result(timeout=60)
    try:
        yield
    finally:
        worker._loop.call_soon_threadsafe(job.stop)


def post(running, path, body, **kwargs):
    content = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    headers = {"content-type": "application/json", **kwargs.pop("headers", {})}
    return httpx.post(running.url + path, content=content, headers=headers, timeout=120, **kwargs)


def assert_openai_error(response, status, code=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    if code:
        assert error["code"] == code, error


# --------------------------------------------------------------------------- units
def test_stop_scanner_holds_back_a_partial_stop_across_pieces():
    scanner = StopScanner(["<|end|>"])
    sent = [scanner.feed(piece) for piece in ["Hello <", "|e", "nd", "|> more"]]
    assert "".join(sent) == "Hello "
    assert scanner.stopped
    scanner = StopScanner(["<|end|>"])
    sent = [scanner.feed(piece) for piece in ["a <", "b"]] + [scanner.flush()]
    assert "".join(sent) == "a <b" and not scanner.stopped


def test_targets_and_hosts():
    assert parse_target("tiny=build/x") == ("tiny", "build/x")
    assert parse_target("build/a=b") == (None, "build/a=b")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")


def test_importing_the_plugin_stays_light():
    code = (
        "import sys, slmk_serve, slmk_serve.cli; "
        "heavy = [m for m in ('fastapi', 'uvicorn', 'openai', 'onnxruntime_genai', 'torch') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------------------- answers
def test_models_are_listed_by_name(server, client, build):
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {model_of(build), "second"}
    assert models["second"].owned_by == "slmk"
    assert models["second"].model_extra["context_length"] == 512
    assert "max_length" in models["second"].model_extra["generation_defaults"]  # from genai_config.json
    assert client.models.retrieve("second").id == "second"


def test_chat_equals_the_in_process_runtime(client, build, reference):
    for question, (text, prompt_tokens, generated, _) in reference.items():
        reply = client.chat.completions.create(
            model=model_of(build), messages=user(question), temperature=0, max_tokens=ANSWER_TOKENS
        )
        assert reply.choices[0].message.content == text
        assert reply.choices[0].message.role == "assistant"
        assert reply.usage.prompt_tokens == prompt_tokens
        assert reply.usage.completion_tokens == generated
        assert reply.usage.total_tokens == prompt_tokens + generated
        assert reply.choices[0].finish_reason == ("length" if generated >= ANSWER_TOKENS else "stop")


def test_streamed_chat_equals_the_in_process_runtime_piece_by_piece(client, build, reference):
    question = QUESTIONS[0]
    text, prompt_tokens, generated, in_process_pieces = reference[question]
    stream = client.chat.completions.create(
        model=model_of(build),
        messages=user(question),
        temperature=0,
        max_tokens=ANSWER_TOKENS,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, reasons, usage = [], [], None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                reasons.append(choice.finish_reason)
    assert pieces == in_process_pieces  # token for token: one event per piece the runtime streamed
    assert "".join(pieces) == text and len(pieces) > 1
    assert reasons == ["stop"]
    assert (usage.prompt_tokens, usage.completion_tokens) == (prompt_tokens, generated)


def test_a_second_model_is_chosen_by_name(server, client, build, reference):
    def finished(name):
        return server.workers[name].outcomes.get("finished", 0)

    before = {name: finished(name) for name in server.models}
    question = QUESTIONS[1]
    reply = client.chat.completions.create(
        model="second", messages=user(question), temperature=0, max_tokens=ANSWER_TOKENS
    )
    assert reply.model == "second"
    assert reply.choices[0].message.content == reference[question].text
    # the second model's session answered, not the first's
    assert finished("second") == before["second"] + 1
    assert finished(model_of(build)) == before[model_of(build)]


def test_completions_answer_the_prompt_as_one_user_turn(client, build, reference):
    question = QUESTIONS[0]
    reply = client.completions.create(model=model_of(build), prompt=question, temperature=0, max_tokens=ANSWER_TOKENS)
    assert reply.object == "text_completion"
    assert reply.choices[0].text == reference[question].text
    streamed = client.completions.create(
        model=model_of(build), prompt=question, temperature=0, max_tokens=ANSWER_TOKENS, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == reference[question].text


def test_stop_strings_end_the_answer_before_them(client, build, reference):
    question = QUESTIONS[0]
    text = reference[question].text
    words = text.split()
    assert len(words) >= 3, text
    stop = " " + words[2]
    expected = text[: text.index(stop)]
    reply = client.chat.completions.create(
        model=model_of(build), messages=user(question), temperature=0, max_tokens=ANSWER_TOKENS, stop=[stop, "zzz"]
    )
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens < reference[question].generated_tokens  # generation stopped there
    stream = client.chat.completions.create(
        model=model_of(build), messages=user(question), temperature=0, max_tokens=ANSWER_TOKENS, stop=stop, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected


def test_max_tokens_cuts_the_answer_with_finish_reason_length(client, build, reference):
    question = QUESTIONS[0]
    reply = client.chat.completions.create(model=model_of(build), messages=user(question), temperature=0, max_tokens=2)
    assert reply.usage.completion_tokens == 2
    assert reply.choices[0].finish_reason == "length"
    assert reference[question].text.startswith(reply.choices[0].message.content)


def test_a_seed_repeats_a_sampled_answer(client, build):
    def ask():
        return client.chat.completions.create(
            model=model_of(build), messages=user(QUESTIONS[1]), temperature=1.0, top_p=0.95, seed=7, max_tokens=24
        )

    assert ask().choices[0].message.content == ask().choices[0].message.content


def test_concurrent_requests_are_queued_and_all_answered(server, build, reference):
    from concurrent.futures import ThreadPoolExecutor

    def ask(question):
        with openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0) as c:
            reply = c.chat.completions.create(
                model=model_of(build), messages=user(question), temperature=0, max_tokens=ANSWER_TOKENS
            )
            return question, reply.choices[0].message.content

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(ask, QUESTIONS * 2))
    assert all(text == reference[question].text for question, text in results)


# --------------------------------------------------------------------------- errors
def test_bad_requests_get_the_right_4xx_and_the_server_keeps_serving(server, client, build, reference):
    model = model_of(build)
    assert_openai_error(post(server, "/v1/chat/completions", b'{"model": '), 400)
    assert_openai_error(
        post(server, "/v1/chat/completions", {"model": "nope", "messages": user("hi")}), 404, "model_not_found"
    )
    long_prompt = "word " * 1000  # far over the tiny model's 512-token context
    assert_openai_error(
        post(server, "/v1/chat/completions", {"model": model, "messages": user(long_prompt)}),
        400,
        "context_length_exceeded",
    )
    negative = post(server, "/v1/chat/completions", {"model": model, "messages": user("hi"), "max_tokens": -1})
    assert_openai_error(negative, 400)
    assert negative.json()["error"]["param"] == "max_tokens"
    over = post(server, "/v1/chat/completions", {"model": model, "messages": user("hi"), "max_tokens": 100_000})
    assert_openai_error(over, 400)
    assert_openai_error(post(server, "/v1/chat/completions", {"model": model, "messages": []}), 400)
    fewer = {"model": model, "messages": user("hi"), "max_tokens": 4, "min_tokens": 8}
    assert_openai_error(post(server, "/v1/chat/completions", fewer), 400)
    assert_openai_error(post(server, "/v1/chat/completions", {"model": model, "messages": user("hi"), "n": 2}), 400)
    assert_openai_error(post(server, "/v1/chat/completions", {"model": model, "messages": [{"role": "x"}]}), 400)
    big = json.dumps({"model": model, "messages": user("a" * BODY_LIMIT)}).encode()
    assert_openai_error(post(server, "/v1/chat/completions", big), 413)  # declared by Content-Length

    def chunked():  # no Content-Length: counted as it arrives
        for start in range(0, len(big), 4096):
            yield big[start : start + 4096]

    assert_openai_error(post(server, "/v1/chat/completions", chunked()), 413)
    plain = post(server, "/v1/chat/completions", b"{}", headers={"content-type": "text/plain"})
    assert_openai_error(plain, 400)
    assert "JSON" in plain.json()["error"]["message"]
    assert_openai_error(httpx.get(server.url + "/v1/nothing-here"), 404)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=user("hi"))
    with pytest.raises(openai.BadRequestError, match="context"):
        client.chat.completions.create(model=model, messages=user(long_prompt))
    # still serving, and still right
    question = QUESTIONS[0]
    reply = client.chat.completions.create(
        model=model, messages=user(question), temperature=0, max_tokens=ANSWER_TOKENS
    )
    assert reply.choices[0].message.content == reference[question].text
    assert server.wait_idle(30) and server.active_generations() == 0


def test_an_api_key_is_required_when_set(build, reference):
    with serve([str(build)], ServeOptions(port=0, api_key="s3cret")) as running:
        model = model_of(build)
        assert httpx.get(running.url + "/health").status_code == 200  # liveness needs no key
        missing = httpx.get(running.url + "/v1/models")
        assert_openai_error(missing, 401, "invalid_api_key")
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = post(
            running,
            "/v1/chat/completions",
            {"model": model, "messages": user("hi")},
            headers={"authorization": "Bearer x"},
        )
        assert_openai_error(wrong, 401, "invalid_api_key")
        with (
            openai.OpenAI(base_url=running.base_url, api_key="wrong", max_retries=0) as bad,
            pytest.raises(openai.AuthenticationError),
        ):
            bad.models.list()
        with openai.OpenAI(base_url=running.base_url, api_key="s3cret", max_retries=0) as good:
            question = QUESTIONS[0]
            reply = good.chat.completions.create(
                model=model, messages=user(question), temperature=0, max_tokens=ANSWER_TOKENS
            )
            assert reply.choices[0].message.content == reference[question].text


def test_a_full_queue_answers_503_at_once_and_a_long_wait_503_after_the_timeout(build):
    limits = Limits(max_batch=1, max_queue=1, queue_timeout_s=0.5)
    with serve([str(build)], ServeOptions(port=0, limits=limits)) as running:
        model = model_of(build)
        body = {"model": model, "messages": user("hi"), "max_tokens": 4}
        with holding_the_batch(running, model):
            # the request is admitted (the queue's one place) but the batch never has room within the timeout
            assert_openai_error(post(running, "/v1/chat/completions", body), 503, "queue_timeout")
        assert post(running, "/v1/chat/completions", body).status_code == 200
    limits = Limits(max_batch=1, max_queue=1, queue_timeout_s=60)
    with serve([str(build)], ServeOptions(port=0, limits=limits)) as running:
        model = model_of(build)
        worker = running.workers[model]
        body = {"model": model, "messages": user("hi"), "max_tokens": 4}
        # fill the model's two places: the batch's (held) and the queue's (a request waiting for it)
        results = {}
        with httpx.Client(timeout=120) as waiting_client:
            with holding_the_batch(running, model):
                waiter = threading.Thread(
                    target=lambda: results.setdefault(
                        "first", waiting_client.post(running.url + "/v1/chat/completions", json=body)
                    )
                )
                waiter.start()
                asyncio.run_coroutine_threadsafe(_until(lambda: worker.admitted == 2), worker._loop).result(timeout=60)
                refused = post(running, "/v1/chat/completions", body)
                assert_openai_error(refused, 503, "queue_full")
                assert refused.headers["retry-after"] == "1"
            waiter.join(timeout=120)
        assert results["first"].status_code == 200  # the waiting request was served once the batch had room


def test_concurrent_answers_are_batched_and_equal_the_single_answers_token_for_token(build, reference):
    """Eight clients at once on one copy of the model: decoded together, each answer as if alone."""
    from concurrent.futures import ThreadPoolExecutor

    limits = Limits(max_batch=4, max_queue=16)
    with serve([f"tiny={build}"], ServeOptions(port=0, limits=limits)) as running:
        worker = running.workers["tiny"]
        assert isinstance(worker, BatchWorker) and worker.snapshot()["max_batch"] == 4
        largest = []
        batch = worker.session
        advance = batch.advance

        def counting(sequences):  # how many answers each step decodes together
            largest.append(len(sequences))
            return advance(sequences)

        batch.advance = counting

        def ask(question):
            with openai.OpenAI(base_url=running.base_url, api_key="unused", max_retries=0, timeout=120) as c:
                stream = c.chat.completions.create(
                    model="tiny", messages=user(question), temperature=0, max_tokens=ANSWER_TOKENS, stream=True
                )
                return question, [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(ask, QUESTIONS * 3))
        assert running.wait_idle(30)
    for question, pieces in results:
        assert "".join(pieces) == reference[question].text
    assert max(largest) > 1  # answers really were decoded together
    assert max(largest) <= 4


def test_a_cancelled_answer_never_disturbs_the_others(build, reference):
    """Clients that hang up mid-answer leave the batch; the answers decoded beside them stay exact."""
    from concurrent.futures import ThreadPoolExecutor

    with serve([f"tiny={build}"], ServeOptions(port=0, limits=Limits(max_batch=4))) as running:
        worker = running.workers["tiny"]
        model = "tiny"
        leaving = {"model": model, "messages": user("hi"), "max_tokens": 450, "min_tokens": 450, "stream": True}
        gate = threading.Barrier(4)

        def leave():
            gate.wait(timeout=60)
            with httpx.stream("POST", running.url + "/v1/chat/completions", json=leaving, timeout=120) as response:
                for line in response.iter_lines():
                    if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                        break  # hang up after the first token

        def ask(question):
            gate.wait(timeout=60)
            reply = post(
                running,
                "/v1/chat/completions",
                {"model": model, "messages": user(question), "temperature": 0, "max_tokens": ANSWER_TOKENS},
            )
            return question, reply.json()["choices"][0]["message"]["content"]

        with ThreadPoolExecutor(4) as pool:
            leavers = [pool.submit(leave) for _ in range(2)]
            answers = [pool.submit(ask, q) for q in QUESTIONS[:2]]
            results = [future.result(timeout=120) for future in answers]
            for future in leavers:
                future.result(timeout=120)
        assert running.wait_idle(30)
        outcomes = [record.outcome for record in worker.history]
    for question, text in results:
        assert text == reference[question].text
    assert outcomes.count("finished") >= 2
    assert "cancelled" in outcomes or outcomes.count("finished") == 4


def test_parallel_is_refused_in_one_line(run_slmk, build):
    result = run_slmk("serve", str(build), "--parallel", "2")
    assert result.returncode != 0
    assert "--parallel was removed" in result.stderr and "--max-batch" in result.stderr
    assert "Traceback" not in result.stderr


async def _until(condition) -> None:
    """Wait on the server's own loop until ``condition`` holds (checked after each loop turn)."""
    while not condition():
        await asyncio.sleep(0)


def test_a_client_that_leaves_mid_stream_frees_its_generation_at_once(server, build):
    model = model_of(build)
    worker = server.workers[model]
    # min_tokens holds off the end token: the answer would run to the end of the context
    body = {"model": model, "messages": user("hi"), "max_tokens": 450, "min_tokens": 450, "stream": True}
    for _attempt in range(3):
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=120) as response:
            assert response.status_code == 200
            # read until the first token arrived, then hang up
            for line in response.iter_lines():
                if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                    break
        assert server.wait_idle(30), "a generation is still running after its client left"
        record = worker.history[-1]
        # The precondition: the generation was still running when the client left. The tiny
        # model writes 450 tokens in about 0.1 s; should it have outrun the hang-up on a busy
        # machine, try again (a server that never cancels fails all three times).
        if not (record.outcome == "finished" and record.generated_tokens == 450):
            break
    assert server.active_generations() == 0
    assert record.outcome == "cancelled", record
    assert 0 < record.generated_tokens < 450
    reply = post(server, "/v1/chat/completions", {"model": model, "messages": user("hi"), "max_tokens": 4})
    assert reply.status_code == 200


def test_the_foundry_runtime_serves_through_the_same_hook(build, reference):
    with serve([f"tiny={build}"], ServeOptions(port=0, runtime="foundry")) as running:
        assert running.workers["tiny"].runtime == "foundry"
        with openai.OpenAI(base_url=running.base_url, api_key="unused", max_retries=0) as c:
            question = QUESTIONS[0]
            text, prompt_tokens, _, _ = reference[question]
            reply = c.chat.completions.create(
                model="tiny", messages=user(question), temperature=0, max_tokens=ANSWER_TOKENS
            )
            assert reply.choices[0].message.content == text  # the same ONNX Runtime GenAI core underneath
            assert reply.usage.prompt_tokens == prompt_tokens
            stream = c.chat.completions.create(
                model="tiny", messages=user(question), temperature=0, max_tokens=ANSWER_TOKENS, stream=True
            )
            assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices) == text


def test_a_client_that_stops_reading_frees_the_session_after_the_stall_timeout(build):
    session = open_session(build)
    worker = ModelWorker("tiny", build, "ortgenai", [session], Limits(stall_timeout_s=0.3))

    async def scenario():
        worker.attach(asyncio.get_running_loop())
        job = Job(user("hi"), {"max_new_tokens": 450}, min_tokens=450)
        await worker.start(job)  # generating, and nobody takes its pieces
        idle = await asyncio.get_running_loop().run_in_executor(None, worker.wait_idle, 60)
        return job, idle

    try:
        job, idle = asyncio.run(scenario())
    finally:
        worker.close()
    assert idle
    assert job.outcome == "stalled"
    # it ran MAX_AHEAD pieces ahead of its absent reader, then gave up
    assert MAX_AHEAD <= job.stats.generated_tokens < 450


def test_a_batched_client_that_stops_reading_is_paused_then_dropped_after_the_stall_timeout(build, reference):
    session = open_session(build, options={"max_batch": 2})
    worker = BatchWorker("tiny", build, "ortgenai", session, Limits(max_batch=2, stall_timeout_s=0.3))
    question = QUESTIONS[0]

    async def scenario():
        worker.attach(asyncio.get_running_loop())
        silent = Job(user("hi"), {"max_new_tokens": 450}, min_tokens=450)
        await worker.start(silent)  # generating, and nobody takes its pieces
        reader = Job(user(question), {"do_sample": False, "max_new_tokens": ANSWER_TOKENS})
        await worker.start(reader)
        text = "".join([piece async for piece in reader.pieces()])
        idle = await asyncio.get_running_loop().run_in_executor(None, worker.wait_idle, 60)
        return silent, text, idle

    try:
        silent, text, idle = asyncio.run(scenario())
    finally:
        worker.close()
    assert idle
    assert text == reference[question].text  # decoded beside the paused one, unchanged
    assert silent.outcome == "stalled"
    # it ran MAX_AHEAD pieces ahead of its absent reader, then was paused, then dropped
    assert MAX_AHEAD <= silent.stats.generated_tokens < 450


def test_a_request_the_batch_cannot_take_runs_alone_on_a_plain_session(build):
    session = open_session(build, options={"max_batch": 2})
    worker = BatchWorker("tiny", build, "ortgenai", session, Limits(max_batch=2))

    async def scenario():
        worker.attach(asyncio.get_running_loop())
        job = Job(user("hi"), {"adapter": "base"})  # a LoRA adapter: not an option of a batched sequence
        with pytest.raises(UsageError, match="not built for separate adapters"):  # the plain session's answer
            await worker.start(job)
        return await asyncio.get_running_loop().run_in_executor(None, worker.wait_idle, 60)

    try:
        assert asyncio.run(scenario())
        assert worker.admitted == 0 and worker.outcomes == {"rejected": 1}
        assert session._solo is not None  # loaded for it, at first use
    finally:
        worker.close()


# --------------------------------------------------------------------------- endpoint runtime
def test_the_openai_endpoint_runtime_measures_a_served_model(server, build, reference):
    registry = get_registry()
    runtime = registry.get("slmk_runtimes", "openai-endpoint", "runtime")
    ep = resolve_ep(registry, "cpu")
    options = {"base_url": server.base_url, "model": "second"}
    session = runtime.load(LoadRequest(path=build, execution_provider=ep, options=options))
    try:
        assert session.context_length == 512
        question = QUESTIONS[0]
        text = "".join(session.generate(user(question), do_sample=False, max_new_tokens=ANSWER_TOKENS))
        assert text == reference[question].text
        assert session.last_stats.prompt_tokens == reference[question].prompt_tokens
        assert session.last_stats.generated_tokens == reference[question].generated_tokens
        assert session.last_stats.time_to_first_token_s > 0
        with pytest.raises(UsageError, match="min_length"):
            session.generate(user(question), min_length=40)
    finally:
        session.close()
    with pytest.raises(UsageError, match="second"):
        runtime.load(LoadRequest(path=build, execution_provider=ep, options={**options, "model": "nope"}))


# --------------------------------------------------------------------------- the command
def test_slmk_serve_listens_on_loopback_and_stops_on_ctrl_c(build, reference):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "slmk", "serve", f"tiny={build}", "--port", "0"],
        preexec_fn=default_signals,  # Ctrl-C works even when the suite runs with SIGINT ignored
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        first = process.stdout.readline()
        assert first.startswith("serving tiny at http://127.0.0.1:"), first + process.stderr.read()
        base_url = first.split(" at ")[1].split()[0]
        with openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0) as c:
            question = QUESTIONS[0]
            reply = c.chat.completions.create(
                model="tiny", messages=user(question), temperature=0, max_tokens=ANSWER_TOKENS
            )
            assert reply.choices[0].message.content == reference[question].text
        process.send_signal(signal.SIGINT)
        returncode = process.wait(timeout=60)
        # a crash on the way out (a native library torn down in the wrong order) shows its stacks here
        assert returncode == 0, f"exit {returncode}:\n{process.stderr.read()[-4000:]}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_slmk_serve_refuses_a_missing_target_in_one_line(run_slmk, tmp_path):
    result = run_slmk("serve", str(tmp_path / "missing"), "--port", "0")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "does not exist" in lines[0], result.stderr


@pytest.mark.slow
def test_deploy_can_finish_with_the_endpoint_up(tiny_model_dir, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "slmk", "-q", "deploy", str(tiny_model_dir), "--name", "served"]
    command += ["--cache-dir", str(tmp_path / "foundry"), "--leak-runs", "10", "--max-slowdown", "4"]
    process = subprocess.Popen(
        [*command, "--serve", "--port", "0"],
        preexec_fn=default_signals,  # Ctrl-C works even when the suite runs with SIGINT ignored
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        lines = []
        for line in process.stdout:  # deploy's summary, then the endpoint
            lines.append(line)
            if line.startswith("serving "):
                break
        assert lines and lines[-1].startswith("serving served at http://127.0.0.1:"), "".join(lines)
        base_url = lines[-1].split(" at ")[1].split()[0]
        how_to = [process.stdout.readline() for _ in range(3)]
        assert how_to[0].strip().startswith(f"curl {base_url}/chat/completions"), how_to
        with openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0) as c:
            reply = c.chat.completions.create(model="served", messages=user(QUESTIONS[0]), temperature=0)
            assert "four" in reply.choices[0].message.content
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_deploy_serve_refuses_json(run_slmk, tiny_model_dir):
    result = run_slmk("deploy", str(tiny_model_dir), "--name", "x", "--serve", "--json")
    assert result.returncode == 2
    assert "--serve" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.slow
def test_bench_and_validate_measure_the_endpoint_an_app_will_call(server, build, run_slmk):
    """`slmk bench/validate --endpoint URL --model NAME`: the same figures and checklist over HTTP."""
    eval_file = Path(__file__).resolve().parent.parent / "examples" / "tiny-chat" / "data" / "eval.jsonl"
    bench = run_slmk(
        "bench",
        "--endpoint",
        server.base_url,
        "--model",
        model_of(build),
        "--lengths",
        "16,64",
        "--repeats",
        "1",
        "--new-tokens",
        "8",
        "--json",
    )
    assert bench.returncode == 0, bench.stderr
    report = json.loads(bench.stdout)
    assert report["runtime"] == "openai-endpoint" and len(report["lengths"]) == 2
    assert all(row["decode_tokens_per_s"]["median"] > 0 for row in report["lengths"])
    validate = run_slmk(
        "validate",
        "--endpoint",
        server.base_url,
        "--model",
        model_of(build),
        "--eval",
        str(eval_file),
        "--leak-runs",
        "100",
        "--leak-threshold-kb",
        "256",
        "--sessions",
        "2",
        "--json",
    )
    checks = {c["id"]: c for c in json.loads(validate.stdout)["checks"]}
    assert checks["domain"]["status"] == "pass" and checks["domain"]["data"]["accuracy"] >= 0.9, checks["domain"]
    assert validate.returncode == 0, [c for c in checks.values() if c["status"] == "fail"]
    both = run_slmk("bench", str(build), "--endpoint", server.base_url, "--model", "x")
    assert both.returncode == 2 and "not both" in both.stderr
    nameless = run_slmk("validate", "--endpoint", server.base_url)
    assert nameless.returncode == 2 and "--model" in nameless.stderr
