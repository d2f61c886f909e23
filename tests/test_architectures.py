"""The architecture matrix: every architecture slmk names a family for, built for real.

For each ``tests/architectures/<name>.json`` a tiny random model with that architecture's
real config field set is made with transformers, then built by the ONNX Runtime GenAI
model builder at fp32, int8 and int4 (once per session, shared by the tests below):

* fp32 ONNX greedy output equals transformers' greedy output token for token on ten
  prompts, the prompt tokens included;
* int8 and int4 builds load and generate;
* the family's chat template round-trips through the four Foundry pieces (or the notes
  say exactly why a conversation cannot);
* the int4 build installs into Foundry Local and answers through the SDK, the same
  tokens as onnxruntime-genai gives on the same folder;
* a transformers-4.x ``config.json`` (``rope_scaling``, ``torch_dtype``) of the same
  weights builds to the same greedy output as the transformers-5 one.

Set ``SLMK_ARCH_REPORT=FILE`` to write the figures of the run (docs/architectures.md).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from architectures import make_tiny
from slmk_ortgenai import builder as ortgenai_builder
from slmk_templates.command import show_template

from slmk import app
from slmk.cli.build import inspect_model
from slmk.fsutil import dir_size
from slmk.progress import Progress

pytestmark = [pytest.mark.usefixtures("one_torch_thread")]

ARCHITECTURES = make_tiny.names()
PRECISIONS = ("fp32", "int8", "int4")
NEW_TOKENS = 12
PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "user", "content": "List three prime numbers."}],
    [{"role": "user", "content": "Translate 'good morning' into German."}],
    [{"role": "user", "content": "Why is the sky blue? Answer in one sentence."}],
    [{"role": "user", "content": "def add(a, b):\n    return a + b\n\nExplain this function."}],
    [{"role": "user", "content": "Ünïcödé, emoji 🙂 and numbers 12345: repeat them."}],
    [
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hi, how can I help?"},
        {"role": "user", "content": "Tell me a joke."},
    ],
    [{"role": "user", "content": "Summarise: the quick brown fox jumps over the lazy dog. " * 6}],
    [{"role": "user", "content": "   leading and trailing spaces   "}],
]
REPORT: dict[str, dict] = {}


def _record(name: str, **figures) -> None:
    REPORT.setdefault(name, {}).update(figures)


@pytest.fixture(scope="module", autouse=True)
def _write_report():
    yield
    path = os.environ.get("SLMK_ARCH_REPORT")
    if path:
        Path(path).write_text(json.dumps(REPORT, indent=2, sort_keys=True) + "\n", encoding="utf-8")


class Matrix:
    """Tiny models and their builds, each made once per module."""

    def __init__(self, root: Path):
        self.root = root
        self.models: dict[tuple[str, str], Path] = {}
        self.builds: dict[tuple[str, str, str], Path] = {}

    def model(self, name: str, style: str = "v5") -> Path:
        key = (name, style)
        if key not in self.models:
            self.models[key] = make_tiny.make_tiny_model(
                name, self.root / "models" / f"{name}-{style}", config_style=style
            )
        return self.models[key]

    def build(self, name: str, precision: str, style: str = "v5") -> Path:
        key = (name, precision, style)
        if key not in self.builds:
            out = self.root / "builds" / f"{name}-{style}-{precision}"
            label = f"build_{precision}" + ("_v4" if style == "v4" else "")
            start = time.perf_counter()
            try:
                app.convert(self.model(name, style), out, precision=precision, cache_dir=self.root / "step-cache")
            except Exception as exc:
                _record(name, **{label: f"fails: {exc}"})
                raise
            _record(name, **{label: f"ok ({time.perf_counter() - start:.1f} s)"})
            self.builds[key] = out
        return self.builds[key]


@pytest.fixture(scope="module")
def matrix(tmp_path_factory) -> Matrix:
    return Matrix(tmp_path_factory.mktemp("architectures"))


def _transformers_greedy(model_dir: Path) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, generated ids) per prompt: transformers' tokenizer, chat template and greedy search."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()
    results = []
    for messages in PROMPTS:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            output = model.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
            )
        results.append((prompt, output[0, len(prompt) :].tolist()))
    return results


def _ortgenai_greedy(build: Path, prompts=PROMPTS, prompt_ids=None) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, generated ids) per prompt through slmk's ortgenai runtime: its own tokenizer and
    chat template, or the given ``prompt_ids`` (to compare the model alone)."""
    session = app.open_session(build)
    try:
        results = []
        for index, messages in enumerate(prompts):
            if prompt_ids is None:
                prompt = session.encode(session.render_prompt(messages))
                "".join(session.generate(messages, do_sample=False, max_new_tokens=NEW_TOKENS))
            else:
                prompt = prompt_ids[index]
                "".join(session.generate_ids(prompt, do_sample=False, max_new_tokens=NEW_TOKENS))
            assert session.last_stats.prompt_tokens == len(prompt)
            results.append((prompt, list(session.last_token_ids)))
        return results
    finally:
        session.close()


@pytest.fixture(scope="module")
def transformers_greedy(matrix):
    cache: dict[str, list] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = _transformers_greedy(matrix.model(name))
        return cache[name]

    return get


# ------------------------------------------------------------------ parity
@pytest.mark.slow
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_fp32_greedy_equals_transformers(name, matrix, transformers_greedy):
    """The fp32 ONNX model, fed transformers' prompt tokens, picks the same greedy tokens."""
    expected = transformers_greedy(name)
    got = _ortgenai_greedy(matrix.build(name, "fp32"), prompt_ids=[prompt for prompt, _ in expected])
    same = sum(e == g for e, g in zip(expected, got, strict=True))
    _record(name, parity=f"{same}/{len(PROMPTS)}")
    for index, ((_, want), (_, have)) in enumerate(zip(expected, got, strict=True)):
        assert have == want, f"prompt {index}: greedy tokens differ: transformers {want}, onnx {have}"
    assert all(len(tokens) > 0 for _, tokens in got)


@pytest.mark.slow
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_onnx_chat_prompt_tokens_equal_transformers(name, matrix, transformers_greedy):
    """slmk's runtime, with the build's own chat template, gives transformers' prompt tokens, and so its answer.

    (onnxruntime-genai's own tokenizer puts '▁' after every special token of a SentencePiece
    tokenizer; the runtime encodes with the tokenizers library instead: slmk_ortgenai.tokenization.)"""
    expected = transformers_greedy(name)
    got = _ortgenai_greedy(matrix.build(name, "fp32"))
    same = sum(e == g for e, g in zip(expected, got, strict=True))
    _record(name, prompt_tokens=f"{same}/{len(PROMPTS)}")
    for index, ((want_prompt, want), (got_prompt, have)) in enumerate(zip(expected, got, strict=True)):
        assert got_prompt == want_prompt, f"prompt {index}: onnxruntime-genai tokenizes the chat differently"
        assert have == want, f"prompt {index}: greedy tokens differ"


DECODE_TEXT = "Hello world, how are you? 12345 Ünïcödé 🙂 def add(a, b): return a + b"
SPACE_RUN = "  "
#: Prompts (by index) with runs of spaces that onnxruntime-extensions' BPE splits otherwise than
#: transformers in a SentencePiece vocabulary with multi-space pieces (Mistral v0.3's '▁▁▁▁'):
#: ['▁▁▁', '▁return'] where transformers has ['▁▁▁▁', 'return']. Not the dummy prefix; pinned so a
#: fix or a new difference shows.
SPACE_RUN_DIFFERENCES = {"gemma2": (5,), "gemma3": (5,), "mistral": (5, 9)}


@pytest.mark.slow
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_genai_tokenizer_gives_transformers_chat_prompt_tokens(name, matrix, transformers_greedy):
    """onnxruntime-genai's own tokenizer (what Foundry Local tokenizes with) on the build's files gives
    transformers' prompt tokens for the chat prompts: the build's tokenizer.json rewrite at work."""
    import onnxruntime_genai as og
    from transformers import AutoTokenizer

    build = matrix.build(name, "fp32")
    tok = AutoTokenizer.from_pretrained(str(matrix.model(name)))
    texts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in PROMPTS]
    genai = og.Tokenizer(og.Model(str(build)))
    got = [[int(t) for t in genai.encode(text)] for text in texts]
    expected = [prompt for prompt, _ in transformers_greedy(name)]
    same = sum(g == e for g, e in zip(got, expected, strict=True))
    _record(name, genai_prompt_tokens=f"{same}/{len(PROMPTS)}")
    for index, (text, want, have) in enumerate(zip(texts, expected, got, strict=True)):
        if index in SPACE_RUN_DIFFERENCES.get(name, ()):
            assert SPACE_RUN in text and have != want, f"prompt {index}: the pinned space-run difference is gone"
        else:
            assert have == want, f"prompt {index}: onnxruntime-genai's tokenizer differs from transformers'"
    # decoding is unchanged by the rewrite: onnxruntime-genai gives transformers' text (it keeps the
    # leading space of a first word, with or without the decoder's Strip)
    ids = tok(DECODE_TEXT, add_special_tokens=False)["input_ids"]
    assert genai.decode(ids).lstrip(" ") == tok.decode(ids, skip_special_tokens=True).lstrip(" ") == DECODE_TEXT


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_transformers4_config_builds_the_same_model(name, matrix, transformers_greedy):
    """The same weights with the published 4.x config.json (rope_scaling, torch_dtype) give the same tokens."""
    v4 = matrix.model(name, "v4")
    assert "rope_parameters" not in json.loads((v4 / "config.json").read_text())
    expected = transformers_greedy(name)[:3]
    got = _ortgenai_greedy(matrix.build(name, "fp32", style="v4"), PROMPTS[:3], [p for p, _ in expected])
    assert [tokens for _, tokens in got] == [tokens for _, tokens in expected]


# ------------------------------------------------------------------ quantized builds
@pytest.mark.parametrize("precision", ["int8", "int4"])
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_quantized_build_loads_and_generates(name, precision, matrix):
    build = matrix.build(name, precision)
    fp32 = matrix.build(name, "fp32")
    info = json.loads((build / "slmk_build.json").read_text())
    assert info["precision"] == precision
    results = _ortgenai_greedy(build, PROMPTS[:3])
    vocab = json.loads((matrix.model(name) / "config.json").read_text())["vocab_size"]
    for _, tokens in results:
        assert 0 < len(tokens) <= NEW_TOKENS and all(0 <= t < vocab for t in tokens)
    ratio = dir_size(build) / dir_size(fp32)
    # int8 too: a tied embedding is read from the output layer's int8 table (slmk's fix; the
    # 0.18 builder alone kept an fp32 copy of it, larger than fp32 on these tiny models)
    assert ratio < 1.0, f"the {precision} build is not smaller than fp32"
    _record(name, **{f"{precision}_ratio": round(ratio, 3), f"{precision}_mb": round(dir_size(build) / 1e6, 2)})
    if precision == "int4":
        _record(name, fp32_mb=round(dir_size(fp32) / 1e6, 2))


# ------------------------------------------------------------------ templates
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_template_show_round_trips_the_chat_template(name, matrix):
    spec = make_tiny.spec(name)
    shown = show_template(str(matrix.model(name)))
    notes = shown["notes"]
    _record(name, family=shown["family"], template_notes=notes)
    assert shown["family"] == spec["family"], shown
    problems = [n for n in notes if n.startswith(("does not round-trip", "round trip not checked"))]
    if spec.get("template", {}).get("round_trip", True):
        assert not problems, notes
    else:  # the notes say where the four pieces differ from the real template
        assert problems and "first difference" in problems[0], notes
    # a build carries the same template (the builder re-saves the tokenizer)
    assert show_template(str(matrix.build(name, "int4")))["prompt_template"] == shown["prompt_template"]


@pytest.mark.parametrize("name", ["granite", "smollm3"])
def test_the_template_show_command_prints_the_same(name, matrix, run_slmk):
    """`slmk template show MODEL --json`: what the command prints is what the test above checked."""
    done = run_slmk("template", "show", str(matrix.model(name)), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == json.loads(json.dumps(show_template(str(matrix.model(name)))))


# ------------------------------------------------------------------ Foundry Local
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_install_into_foundry_and_answer_through_the_sdk(name, matrix, tmp_path):
    from slmk.errors import StepFailed

    build = matrix.build(name, "int4")
    cache = tmp_path / "foundry-cache"
    model_name = f"tiny-{name.replace('.', '-')}"
    if not make_tiny.spec(name).get("template", {}).get("round_trip", True):
        # the installer refuses a PromptTemplate that would give legacy Foundry other prompts
        with pytest.raises(StepFailed, match="does not match the model's chat template") as caught:
            app.install(build, model_name, cache_dir=cache, progress=Progress(quiet=True))
        assert caught.value.one_line().count("\n") == 0 and not list(cache.rglob("genai_config.json"))
        _record(name, foundry="refused: the four pieces do not round-trip")
        return
    installed = app.install(build, model_name, cache_dir=cache, progress=Progress(quiet=True))
    folder, found = app.resolve_target(installed.name, cache_dir=cache)
    messages = PROMPTS[0]
    foundry = app.open_session(folder, runtime="foundry", installed=found, cache_dir=cache)
    try:
        answer = "".join(foundry.generate(messages, do_sample=False, max_new_tokens=NEW_TOKENS))
        stats = foundry.last_stats
    finally:
        foundry.close()
    assert stats.generated_tokens > 0 and stats.prompt_tokens > 0
    ortgenai = app.open_session(folder)
    try:
        expected = "".join(ortgenai.generate(messages, do_sample=False, max_new_tokens=NEW_TOKENS))
    finally:
        ortgenai.close()
    # the SDK runs the same files with the same chat template: the same greedy answer
    assert answer == expected
    _record(name, foundry="installed, answered")


# ------------------------------------------------------------------ refusals
def test_an_architecture_the_builder_does_not_know_is_refused_in_one_line(tmp_path):
    from slmk.errors import UsageError

    model = tmp_path / "falcon"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["FalconForCausalLM"], "model_type": "falcon"}))
    with pytest.raises(UsageError) as caught:
        app.convert(model, tmp_path / "out", precision="int4")
    assert "FalconForCausalLM" in caught.value.one_line() and "\n" not in caught.value.message
    assert not (tmp_path / "out").exists()
    blockers = inspect_model(model)["converter_blockers"]
    assert any("FalconForCausalLM" in b for b in blockers)


def _config_only_model(folder: Path, architecture: str, **fields) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {"architectures": [architecture], "model_type": architecture.lower(), **fields}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def test_every_architecture_the_builder_lists_is_verified_or_refused():
    """The installed builder's dispatch list = the matrix's rows + slmk's refusals: a builder that
    learns an architecture fails this test until the matrix covers it or slmk refuses it."""
    builder = ortgenai_builder
    listed = set(builder.supported_architectures())
    rows = {make_tiny.spec(n)["config"]["architectures"][0] for n in ARCHITECTURES}
    assert set(builder.VERIFIED_ARCHITECTURES) == rows, "VERIFIED_ARCHITECTURES and the matrix's rows differ"
    assert not rows & set(builder.REFUSED_ARCHITECTURES)
    undecided = listed - rows - set(builder.REFUSED_ARCHITECTURES)
    assert not undecided, f"the builder lists {sorted(undecided)}: add a row to tests/architectures/ or refuse it"
    assert rows <= listed, f"the matrix has rows the builder no longer lists: {sorted(rows - listed)}"
    assert "OlmoForCausalLM" in listed and len(listed) > 30  # the 0.18 source was read, not the fallback


@pytest.mark.parametrize("architecture", sorted(ortgenai_builder.REFUSED_ARCHITECTURES))
def test_a_refused_architecture_is_refused_in_one_line_before_building(architecture, tmp_path):
    from slmk.errors import UsageError

    model = _config_only_model(tmp_path / "model", architecture)
    with pytest.raises(UsageError) as caught:
        app.convert(model, tmp_path / "out", precision="fp32")
    line = caught.value.one_line()
    assert architecture in line and "\n" not in caught.value.message, line
    assert not (tmp_path / "out").exists()
    assert any(architecture in b for b in inspect_model(model)["converter_blockers"])


def test_olmo_with_clip_qkv_is_refused_in_one_line(tmp_path):
    """transformers clamps OLMo's Q, K and V to +-clip_qkv (OLMo 1.7 7B); the builder's graph does not."""
    from slmk.errors import UsageError

    fields = {k: v for k, v in make_tiny.spec("olmo")["config"].items() if k != "architectures"}
    model = _config_only_model(tmp_path / "olmo", "OlmoForCausalLM", **{**fields, "clip_qkv": 8.0})
    with pytest.raises(UsageError, match="clip_qkv") as caught:
        app.convert(model, tmp_path / "out", precision="fp32")
    assert "\n" not in caught.value.message and not (tmp_path / "out").exists()
