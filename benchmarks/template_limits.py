"""How fast slmk refuses hostile chat templates, how much memory that takes, and what the
render limits cost an ordinary template. Prints figures; asserts nothing.

    .venv/bin/python benchmarks/template_limits.py [--repeats 200]

1. Each hostile template of tests/test_hardening_inputs.py is rendered in a fresh
   subprocess: seconds until the ChatTemplateError, and the subprocess's peak RSS.
2. The published templates under tests/data/chat_templates are rendered for a
   four-message conversation, --repeats times each, through slmk's bounded environment
   and through plain Jinja ImmutableSandboxedEnvironment (no limits): microseconds per
   rendering, both ways.
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
from slmk.templates import ChatTemplateError, render_chat_template
template = sys.stdin.read()
start = time.perf_counter()
try:
    render_chat_template(template, [{"role": "user", "content": "hi"}])
    outcome = "rendered"
except ChatTemplateError as exc:
    outcome = exc.message[:90]
seconds = time.perf_counter() - start
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "outcome": outcome, "peak_mb": peak_mb}))
"""


def hostile_figures() -> None:
    from test_hardening_inputs import HOSTILE

    print(f"{'hostile template':<28} {'refused in':>10} {'peak RSS':>9}  error")
    for name, template in sorted(HOSTILE.items()):
        out = subprocess.run(
            [sys.executable, "-c", CHILD], input=template, capture_output=True, text=True, timeout=600, check=True
        ).stdout
        result = json.loads(out)
        print(f"{name:<28} {result['seconds']:>9.3f}s {result['peak_mb']:>6.0f} MB  {result['outcome']}")


def overhead_figures(repeats: int) -> None:
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from test_templates import SPECIAL_TOKENS

    from slmk.templates import render_chat_template

    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
    ]
    plain_env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    plain_env.globals["raise_exception"] = lambda message: (_ for _ in ()).throw(ValueError(message))
    print(f"\n{'template':<22} {'slmk (bounded)':>15} {'plain sandbox':>14} {'ratio':>6}")
    for name, tokens in sorted(SPECIAL_TOKENS.items()):
        source = (REPO / "tests" / "data" / "chat_templates" / f"{name}.jinja").read_text()
        messages = conversation if name not in ("gemma-2", "mistral-v0.1") else conversation[1:]
        plain = plain_env.from_string(source)
        render_chat_template(source, messages, special_tokens=tokens)  # compile once
        start = time.perf_counter()
        for _ in range(repeats):
            render_chat_template(source, messages, special_tokens=tokens)
        bounded = (time.perf_counter() - start) / repeats
        start = time.perf_counter()
        for _ in range(repeats):
            plain.render(messages=messages, add_generation_prompt=True, **tokens)
        unbounded = (time.perf_counter() - start) / repeats
        print(f"{name:<22} {bounded * 1e6:>12.0f} us {unbounded * 1e6:>11.0f} us {bounded / unbounded:>5.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    hostile_figures()
    overhead_figures(args.repeats)


if __name__ == "__main__":
    main()
