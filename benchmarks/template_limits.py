"""How fast slmk refuses hostile chat templates, how much memory that takes, and what the
render limits cost an ordinary template. Prints figures; asserts nothing.

    .venv/bin/python benchmarks/template_limits.py [--repeats 200]

1. Each hostile template of tests/test_hardening_inputs.py (metered tricks) and of
   tests/test_templates.py (UNMETERED: work in C no meter sees, and templates nobody
   listed) is rendered in a fresh subprocess: seconds until the ChatTemplateError, the
   peak RSS of that process and of its render worker(s).
2. The render worker: seconds to start one (import jinja2, build the sandbox) and the cost
   of one rendering through it against the same metered rendering in-process.
3. The published templates under tests/data/chat_templates are rendered for a
   four-message conversation, --repeats times each: through the worker (what slmk does),
   metered in-process, and through plain Jinja ImmutableSandboxedEnvironment (no limits):
   microseconds per rendering, each way.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

CHILD = """
import json, resource, sys, time
from slmk_templates import render_worker
from slmk.api.templates import ChatTemplateError, render_chat_template
template = sys.stdin.read()
render_chat_template("{{ 1 }}", [])  # the worker is up: time the hostile rendering alone
start = time.perf_counter()
try:
    render_chat_template(template, [{"role": "user", "content": "hi"}])
    outcome = "rendered"
except ChatTemplateError as exc:
    outcome = exc.message.removeprefix("the chat template ")[:80]
seconds = time.perf_counter() - start
render_worker.shutdown()  # reaped: its peak counts in RUSAGE_CHILDREN
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
worker_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "outcome": outcome, "peak_mb": peak_mb, "worker_mb": worker_mb}))
"""


def hostile_figures() -> None:
    from test_hardening_inputs import HOSTILE
    from test_templates import UNMETERED

    print(f"{'hostile template':<30} {'refused in':>10} {'slmk RSS':>9} {'worker RSS':>10}  error")
    for name, template in [*sorted(HOSTILE.items()), *sorted(UNMETERED.items())]:
        out = subprocess.run(
            [sys.executable, "-c", CHILD], input=template, capture_output=True, text=True, timeout=600, check=True
        ).stdout
        result = json.loads(out)
        print(
            f"{name:<30} {result['seconds']:>9.3f}s {result['peak_mb']:>6.0f} MB {result['worker_mb']:>7.0f} MB  "
            f"{result['outcome']}"
        )


def worker_figures(repeats: int) -> None:
    """Starting a worker, and one small rendering through it against the same one in-process."""
    from slmk_templates import render_worker
    from slmk_templates.sandbox import render_in_process

    template, messages = (
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}",
        [{"role": "user", "content": "hi"}],
    )
    starts = []
    for _ in range(5):
        render_worker.shutdown()
        start = time.perf_counter()
        render_worker.render(template, messages, True, {})
        starts.append(time.perf_counter() - start)
    count = repeats * 5
    worker_pid = render_worker._worker()._proc.pid
    worker_cpu_before, cpu_before, start = _cpu_seconds(worker_pid), time.process_time(), time.perf_counter()
    for _ in range(count):
        render_worker.render(template, messages, True, {})
    through_worker = (time.perf_counter() - start) / count
    cpu_worker = (time.process_time() - cpu_before + _cpu_seconds(worker_pid) - worker_cpu_before) / count
    cpu_before, start = time.process_time(), time.perf_counter()
    for _ in range(count):
        render_in_process(template, messages, True, {})
    in_process = (time.perf_counter() - start) / count
    cpu_in_process = (time.process_time() - cpu_before) / count
    print(
        f"\nrender worker: starts in {min(starts) * 1e3:.0f} ms (median {sorted(starts)[2] * 1e3:.0f} ms of 5).\n"
        f"a small rendering through it: {through_worker * 1e6:.0f} us wall, {cpu_worker * 1e6:.0f} us CPU "
        f"(slmk + worker); in-process: {in_process * 1e6:.0f} us wall, {cpu_in_process * 1e6:.0f} us CPU"
    )


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc (Linux)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def overhead_figures(repeats: int) -> None:
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from slmk_templates.sandbox import _plain_messages, render_chat_template, render_in_process
    from test_templates import SPECIAL_TOKENS

    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
    ]
    plain_env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    plain_env.globals["raise_exception"] = lambda message: (_ for _ in ()).throw(ValueError(message))

    def per_rendering(render, *args, **kwargs) -> float:
        start = time.perf_counter()
        for _ in range(repeats):
            render(*args, **kwargs)
        return (time.perf_counter() - start) / repeats

    print(f"\n{'template':<22} {'slmk (worker)':>14} {'metered':>9} {'plain':>8} {'worker/plain':>13}")
    for name, tokens in sorted(SPECIAL_TOKENS.items()):
        source = (REPO / "tests" / "data" / "chat_templates" / f"{name}.jinja").read_text()
        messages = conversation if name not in ("gemma-2", "mistral-v0.1") else conversation[1:]
        try:
            plain = plain_env.from_string(source)
        except Exception:  # a transformers-only tag ({% generation %}): no plain figure
            plain = None
        render_chat_template(source, messages, special_tokens=tokens)  # compile once, in the worker
        variables, plain_messages = dict(tokens), _plain_messages(messages)
        render_in_process(source, plain_messages, True, variables)  # and here
        worker = per_rendering(render_chat_template, source, messages, special_tokens=tokens)
        metered = per_rendering(render_in_process, source, plain_messages, True, variables)
        if plain is None:
            print(f"{name:<22} {worker * 1e6:>11.0f} us {metered * 1e6:>6.0f} us {'-':>8} {'-':>13}")
            continue
        unbounded = per_rendering(plain.render, messages=messages, add_generation_prompt=True, **tokens)
        print(
            f"{name:<22} {worker * 1e6:>11.0f} us {metered * 1e6:>6.0f} us {unbounded * 1e6:>5.0f} us "
            f"{worker / unbounded:>12.1f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--no-hostile", action="store_true", help="skip the hostile templates (about 2 minutes)")
    args = parser.parse_args()
    import os

    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if not args.no_hostile:
        hostile_figures()
    worker_figures(args.repeats)
    overhead_figures(args.repeats)
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
