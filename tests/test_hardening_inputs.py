"""Bad input and hostile chat templates end in one clear line, never a hang, a crash or an
"internal error" (issue #10, points 2, 6 and 7).

Every CLI case runs the real `python -m slmk` in a subprocess and asserts: a non-zero
exit that is not 3 (3 is slmk's internal error), and one line on stderr starting with
"error:". Hostile templates run with an address-space limit and a hang guard, so a
template that is not bounded fails the test instead of taking the machine down.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from slmk_templates.sandbox import RENDER_STEPS, RENDER_VALUE_CHARS, render_chat_template

from slmk.errors import ChatTemplateError

#: A hostile rendering gets this much address space (a bounded one needs about a tenth).
MEMORY_LIMIT = 3 * 1024**3
#: Only a guard against an unbounded template hanging the suite: a bounded one is refused
#: after at most RENDER_STEPS steps, a second or two.
HANG_GUARD_S = 300


def slmk(*args: str, cwd: Path, memory_limit: int | None = None, timeout: float = 600):
    def limit_memory():
        if memory_limit:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))

    return subprocess.run(
        [sys.executable, "-m", "slmk", *args],
        cwd=cwd,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limit_memory,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """A usage or tool error, not an internal one: one stderr line, 'error: ...'."""
    assert proc.returncode not in (0, 3), (proc.returncode, proc.stdout[-500:], proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert "internal error" not in lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def model_with_template(folder: Path, chat_template: str) -> Path:
    """A model folder no family claims, so slmk derives the template by rendering it."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(
        json.dumps({"model_type": "mystery", "architectures": ["MysteryForCausalLM"], "vocab_size": 10})
    )
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    (folder / "chat_template.jinja").write_text(chat_template)
    return folder


# ------------------------------------------------------------------ point 2: templates
HOSTILE = {
    "nested-loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "nested-loops-over-text": "{% set s = 'x' * 100000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
    "huge-indent": "{{ 'a\nb' | indent(10**9) }}",
    "huge-repetition": "{{ 'x' * 10**9 }}",
    "huge-power": "{{ 10 ** (10 ** 9) }}",
    "huge-format-width": "{{ '{:>1000000000}'.format('x') }}",
    "huge-printf-width": "{{ '%1000000000s' % 'x' }}",
    "huge-center": "{{ 'x'.center(10**9) }}",
    "range-1e9": "{% for i in range(10**9) %}x{% endfor %}",
    "macro-recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "doubling-concatenation": "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
    "{% endfor %}{{ ns.s }}",
    "output-piling-in-a-macro": "{% macro m() %}{% for i in range(100000) %}{{ 'x' * 90000 }}{% endfor %}{% endmacro %}"
    "{{ m() }}",
    "list-of-references-printed": "{% set big = 'x' * 900000 %}{{ [big] * 100000 }}",
    "replace-blowup": "{% set s = 'x' * 100000 %}{{ s.replace('', s) }}",
    "zero-division": "{{ 1 // 0 }}",
    "float-overflow": "{{ 2.0 ** 100000 }}",
    "deep-nesting": "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}",
    "megabyte-exception": "{{ raise_exception('x\n' * 400000) }}",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_chat_template_is_one_template_error_naming_the_model(tmp_path, name):
    model = model_with_template(tmp_path / f"model-{name}", HOSTILE[name])
    proc = slmk("template", "show", str(model), cwd=tmp_path, memory_limit=MEMORY_LIMIT, timeout=HANG_GUARD_S)
    line = assert_one_line_error(proc, str(model), "chat template")
    assert len(line) < 1000


def test_the_limits_stop_a_loop_by_counting_steps_not_by_the_clock():
    """The nested loop is refused for its step count, the same way on any machine."""
    with pytest.raises(ChatTemplateError, match=rf"more than {RENDER_STEPS // 1000:,},\d{{3}} steps"):
        render_chat_template(HOSTILE["nested-loops"], [{"role": "user", "content": "hi"}])
    with pytest.raises(ChatTemplateError, match="render limit"):
        render_chat_template(HOSTILE["huge-repetition"], [{"role": "user", "content": "hi"}])


def test_a_template_that_went_over_a_limit_fails_at_once_on_the_next_rendering():
    template = (
        "{{ messages[0].content }}{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    )
    for _ in range(2):
        with pytest.raises(ChatTemplateError, match="render limit"):
            render_chat_template(template, [{"role": "user", "content": "hi"}])


def test_limits_grow_with_the_conversation_so_long_prompts_still_render():
    long_text = "word " * (RENDER_VALUE_CHARS // 4)  # more than the base value limit
    template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content | trim }}{% endfor %}"
    rendered = render_chat_template(template, [{"role": "user", "content": long_text}])
    assert rendered == "<|user|>" + long_text.strip()


def test_ordinary_template_features_still_render():
    template = (
        "{% for m in messages %}{{ '%-4s|' % m.role }}{{ '{:>3}'.format(loop.index) }}{{ m.content | indent(2) }}"
        "{% endfor %}{{ messages | tojson(indent=2) }}{{ ['a', 'b'] | join(', ') }}{{ 'x' * 3 }}{{ 2 ** 10 }}"
    )
    messages = [{"role": "user", "content": "a\nb"}]
    expected = 'user|  1a\n  b[\n  {\n    "role": "user",\n    "content": "a\\nb"\n  }\n]a, bxxx1024'
    assert render_chat_template(template, messages) == expected


def test_inspect_reports_a_hostile_template_on_its_line_and_goes_on(tmp_path):
    model = model_with_template(tmp_path / "model", HOSTILE["nested-loops"])
    proc = slmk("inspect", str(model), cwd=tmp_path, memory_limit=MEMORY_LIMIT, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    template_lines = [line for line in proc.stdout.splitlines() if "render limit" in line]
    assert len(template_lines) == 1 and str(model) in template_lines[0]


def test_install_with_a_hostile_template_file_is_one_line_and_installs_nothing(tmp_path, tiny_build):
    hostile = tmp_path / "hostile.jinja"
    hostile.write_text(HOSTILE["huge-indent"])
    cache = tmp_path / "foundry"
    proc = slmk(
        "install", str(tiny_build("int4")), "--name", "hostile", "--template", str(hostile), "--cache-dir", str(cache),
        cwd=tmp_path, memory_limit=None, timeout=HANG_GUARD_S,
    )  # fmt: skip
    assert_one_line_error(proc, "chat template", "render limit")
    assert not cache.exists() or not any("hostile" in path.name for path in cache.rglob("*"))


# ------------------------------------------------------------------ point 6: values
@pytest.mark.parametrize(
    ("flag", "value", "key"),
    [
        ("--temperature", "-1", "temperature"),
        ("--temperature", "nan", "temperature"),
        ("--temperature", "inf", "temperature"),
        ("--top-p", "5", "top_p"),
        ("--top-p", "0", "top_p"),
        ("--top-k", "-3", "top_k"),
        ("--repetition-penalty", "0", "repetition_penalty"),
    ],
)
def test_run_refuses_out_of_range_generation_flags(tmp_path, tiny_build, flag, value, key):
    """With a real build, so that an unchecked value would generate and exit 0."""
    proc = slmk("run", str(tiny_build("int4")), "--prompt", "hi", "--max-new-tokens", "2", flag, value, cwd=tmp_path)
    assert_one_line_error(proc, key)


def test_the_ortgenai_runtime_refuses_bad_search_values_from_python(tiny_build):
    from slmk.app import open_session
    from slmk.errors import UsageError

    session = open_session(tiny_build("int4"))
    try:
        for options in ({"temperature": -1.0}, {"temperature": float("nan")}, {"top_p": 5}, {"top_k": -3},
                        {"repetition_penalty": 0}, {"max_length": 0}, {"do_sample": "yes"}):  # fmt: skip
            with pytest.raises(UsageError, match=next(iter(options))):
                session.generate([{"role": "user", "content": "hi"}], **options)
        assert "".join(session.generate([{"role": "user", "content": "hi"}], max_new_tokens=2, temperature=0.0))
    finally:
        session.close()


def test_init_refuses_a_name_that_is_a_path(tmp_path, tiny_model_dir):
    proc = slmk("init", str(tiny_model_dir), "--name", "../x", "-o", str(tmp_path / "slmk.toml"), cwd=tmp_path)
    assert_one_line_error(proc, "invalid name")
    assert not (tmp_path / "slmk.toml").exists()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('trust_remote_code = "yes"\n', "trust_remote_code"),
        ('[quantization]\nis_symmetric = "true"\n', "quantization.is_symmetric"),
        ('[generation]\ntemperature = "0.5"\n', "generation.temperature"),
        ("[generation]\ntemperature = nan\n", "generation.temperature"),
        ("[generation]\ntop_p = 5.0\n", "generation.top_p"),
    ],
)
def test_slmk_toml_takes_real_types_only(tmp_path, text, needle):
    (tmp_path / "slmk.toml").write_text(text)
    proc = slmk("config", "show", cwd=tmp_path)
    assert_one_line_error(proc, needle)


# ------------------------------------------------------------------ point 7: messages
def test_init_into_a_missing_folder_is_one_line(tmp_path, tiny_model_dir):
    proc = slmk("init", str(tiny_model_dir), "-o", str(tmp_path / "missing" / "slmk.toml"), cwd=tmp_path)
    assert_one_line_error(proc, "does not exist")


def test_a_non_utf8_slmk_toml_is_one_line(tmp_path):
    (tmp_path / "slmk.toml").write_bytes(b'name = "caf\xe9"\n')
    proc = slmk("config", "show", cwd=tmp_path)
    assert_one_line_error(proc, "not UTF-8")


def test_config_json_of_an_empty_object_or_array_says_so(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("[]")
    for command in ("inspect", "convert"):
        line = assert_one_line_error(slmk(command, str(model), cwd=tmp_path), "config.json", "holds an array")
        assert "has no config.json" not in line
    (model / "config.json").write_text("{}")  # a folder slmk can describe, but not build
    line = assert_one_line_error(slmk("convert", str(model), cwd=tmp_path), "config.json names no architectures")
    assert "has no config.json" not in line


@pytest.mark.parametrize("content", ["{}", "[]"])
def test_a_genai_config_json_without_a_model_is_not_called_invalid_json(tmp_path, content):
    build = tmp_path / "build"
    build.mkdir()
    (build / "genai_config.json").write_text(content)
    for args in (("run", str(build), "--prompt", "hi"), ("install", str(build), "--name", "x")):
        line = assert_one_line_error(slmk(*args, cwd=tmp_path), "genai_config.json")
        assert "not valid JSON" not in line and "has no config.json" not in line
        assert ("no model section" if content == "{}" else "not a JSON object") in line


def test_a_file_where_a_build_folder_belongs_is_called_a_file(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"\0")
    for target in ("model.onnx", "./model.onnx"):
        line = assert_one_line_error(slmk("run", target, "--prompt", "hi", cwd=tmp_path), "is a file")
        assert "does not exist" not in line and "no installed model" not in line
    assert_one_line_error(slmk("install", "model.onnx", "--name", "x", cwd=tmp_path), "not a folder")


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("tokenizer_config.json", "[1]", "holds an array"),
        ("tokenizer_config.json", '{"chat_template": 5}', "not text"),
        ("generation_config.json", '"x"', "holds a string"),
        ("chat_template.jinja", b"\xff\xfe{{ x }}", "not UTF-8"),
        ("config.json", b'{"model_type": "caf\xe9"}', "not UTF-8"),
        ("config.json", '{"model_type": ["llama"]}', "model_type"),
    ],
)
def test_damaged_model_files_are_one_line_naming_the_file(tmp_path, name, content, needle):
    model = tmp_path / "model"
    shutil.copytree(Path(__file__).parent.parent / "examples" / "tiny-chat" / "model", model)
    (model / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    target = model / name
    target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content)
    assert_one_line_error(slmk("inspect", str(model), cwd=tmp_path), needle)


def test_run_refuses_a_build_whose_chat_template_never_ends_instead_of_hanging(tiny_build, tmp_path, run_slmk):
    """The runtimes render templates in engines without limits: slmk renders it first, bounded."""
    import shutil

    build = tmp_path / "looping"
    shutil.copytree(tiny_build("int4"), build)
    (build / "chat_template.jinja").write_text(
        "{% for a in range(100000) %}{% for b in range(100000) %}{{ a }}{% endfor %}{% endfor %}"
    )
    result = run_slmk("run", str(build), "--prompt", "hi", timeout=120)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1 and str(build) in errors[0], result.stderr
