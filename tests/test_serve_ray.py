"""slmk serve --ray: models as Ray Serve deployments behind the same OpenAI-compatible API.

Real parts: Ray Serve 2.60 (embedded, and a two-node cluster of `ray start` processes on
this machine), the tiny model's int4 build, the ortgenai runtime batching in each replica.
The API tests of tests/test_serve.py run unchanged against the Ray-backed endpoint.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

# Ray: no usage stats, token auth with a token that lives in the environment (never in ~/.ray).
os.environ.update({"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)})

import openai
import test_serve as api
from slmk_serve.ray_serve import RayModel
from slmk_serve.server import RayOptions, ServeOptions, serve
from test_sweep import _free_port, _kill_tree, _wait_for

build = api.build
reference = api.reference

#: The API tests of test_serve.py that take (server, client, build, reference) and hold for any backend.
SAME_API_TESTS = [
    api.test_models_are_listed_by_name,
    api.test_chat_equals_the_in_process_runtime,
    api.test_streamed_chat_equals_the_in_process_runtime_piece_by_piece,
    api.test_a_second_model_is_chosen_by_name,
    api.test_completions_answer_the_prompt_as_one_user_turn,
    api.test_stop_strings_end_the_answer_before_them,
    api.test_max_tokens_cuts_the_answer_with_finish_reason_length,
    api.test_a_seed_repeats_a_sampled_answer,
    api.test_concurrent_requests_are_queued_and_all_answered,
    api.test_bad_requests_get_the_right_4xx_and_the_server_keeps_serving,
]


def _call(test, server, client, build, reference):
    import inspect

    given = {"server": server, "client": client, "build": build, "reference": reference}
    return test(**{name: given[name] for name in inspect.signature(test).parameters})


@pytest.mark.slow
def test_the_same_api_tests_pass_on_an_embedded_ray_with_two_replicas(build, reference):
    temp_dir = Path(tempfile.mkdtemp(prefix="slmkrs", dir="/tmp"))  # Ray's socket paths must stay short
    limits = api.Limits(max_queue=8, max_tokens_limit=api.MAX_TOKENS_LIMIT, max_body_bytes=api.BODY_LIMIT)
    ray = RayOptions(replicas=2, num_cpus=0.25, temp_dir=temp_dir)
    try:
        with serve([str(build), f"second={build}"], ServeOptions(port=0, limits=limits, ray=ray)) as running:
            assert all(isinstance(worker, RayModel) for worker in running.workers.values())
            with openai.OpenAI(base_url=running.base_url, api_key="unused", max_retries=0, timeout=120) as client:
                for test in SAME_API_TESTS:
                    _call(test, running, client, build, reference)
                model = api.model_of(build)
                # constrained output travels to the replica (which runs it alone, beside its batch)
                body = {"model": model, "messages": api.user("hi"), "max_tokens": 8}
                constrained = api.post(
                    running, "/v1/chat/completions", {**body, "response_format": {"type": "json_object"}}
                )
                assert constrained.status_code == 200, constrained.text
                # logprobs do not: refused in one line, not silently dropped
                refused = api.post(running, "/v1/chat/completions", {**body, "logprobs": True})
                assert refused.status_code == 400 and refused.json()["error"]["param"] == "logprobs"
            assert running.wait_idle(30)
            health = api.httpx.get(running.url + "/health").json()["models"][api.model_of(build)]
            assert health["ray"] and health["outcomes"]["finished"] > 0
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


def _ask(base_url: str, question: str) -> str:
    with openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120) as client:
        reply = client.chat.completions.create(
            model="tiny", messages=api.user(question), temperature=0, max_tokens=api.ANSWER_TOKENS
        )
        return reply.choices[0].message.content


@pytest.mark.slow
def test_replicas_on_two_nodes_answer_and_one_survives_losing_the_other(build, reference):
    ray_bin = Path(sys.executable).with_name("ray")
    temp_dir = Path(tempfile.mkdtemp(prefix="slmksv", dir="/tmp"))
    port = _free_port()

    def node(name: str, *args: str):
        log = temp_dir / f"{name}.log"
        command = [
            str(ray_bin),
            "start",
            *args,
            "--num-cpus",
            "1",
            "--dashboard-agent-listen-port",
            str(_free_port()),
            "--dashboard-agent-grpc-port",
            str(_free_port()),
            "--metrics-export-port",
            str(_free_port()),
            "--runtime-env-agent-port",
            str(_free_port()),
            "--block",
        ]
        with open(log, "w") as handle:
            process = subprocess.Popen(
                command, env={**os.environ, "SLMK_NODE_NAME": name}, stdout=handle, stderr=subprocess.STDOUT
            )
        return name, process, log

    started = []
    running = None
    try:
        head = node("head", "--head", "--port", str(port), "--include-dashboard", "false", "--temp-dir", str(temp_dir))
        started.append(head)

        def gcs_up():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False

        _wait_for(gcs_up, "the head node", [head])
        worker = node("worker", "--address", f"127.0.0.1:{port}")
        started.append(worker)
        _wait_for(lambda: "block forever" in worker[2].read_text(), "the worker node", started)

        # one CPU per node and one per replica: Ray puts one replica on each node
        ray = RayOptions(address=f"127.0.0.1:{port}", replicas=2, num_cpus=1)
        running = serve([f"tiny={build}"], ServeOptions(port=0, limits=api.Limits(max_queue=32), ray=ray))
        model = running.workers["tiny"]
        question = api.QUESTIONS[0]
        expected = reference[question].text

        # 1. both replicas answer (Ray Serve's router spreads concurrent requests)
        for _round in range(10):
            with ThreadPoolExecutor(8) as pool:
                assert all(text == expected for text in pool.map(lambda q: _ask(running.base_url, q), [question] * 8))
            if {"head", "worker"} <= set(model.nodes):
                break
        assert {"head", "worker"} <= set(model.nodes), model.nodes

        # 2. the worker node dies under load; the head's replica goes on answering
        results: list[str | BaseException] = []
        stop = threading.Event()

        def load():
            while not stop.is_set():
                try:
                    results.append(_ask(running.base_url, question))
                except Exception as exc:  # an answer cut by the dying replica
                    results.append(exc)

        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        _wait_for(lambda: len(results) >= 4, "answers under load", started)
        _kill_tree(worker[1])
        started.remove(worker)
        killed_at = len(results)
        time.sleep(2)
        stop.set()
        for thread in threads:
            thread.join(timeout=300)
        after = [_ask(running.base_url, question) for _ in range(4)]  # every one answered, by the head's replica
        assert after == [expected] * 4
        answered = [r for r in results[killed_at:] if isinstance(r, str)]
        assert answered and all(text == expected for text in answered)
        assert json.loads(json.dumps(model.snapshot()))["replicas_answered_on"].get("head")
    finally:
        if running is not None:
            running.stop()
        for entry in reversed(started):
            _kill_tree(entry[1])
        shutil.rmtree(temp_dir, ignore_errors=True)
