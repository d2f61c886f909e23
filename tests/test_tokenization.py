"""slmk_ortgenai.tokenization: transformers' prompt tokens in slmk's runtime, and the build-side
tokenizer.json rewrite for onnxruntime-genai (its effect on onnxruntime-genai's own tokenizer is
checked on real builds in tests/test_architectures.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from slmk_ortgenai import tokenization

TOKENIZERS = Path(__file__).parent / "data" / "tokenizers"
TEXTS = [
    "<|user|>\nWhat is the capital of France?<|end|>\n<|assistant|>\n",
    "<s>[INST] What is it? [/INST]",
    "Hello world",
    "  leading and trailing   ",
    "def add(a, b):\n    return a + b",
]


def _saved_by_transformers(kit: str, folder: Path) -> Path:
    """The tokenizer as a build carries it: re-saved by transformers (what the builder does)."""
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(TOKENIZERS / kit)).save_pretrained(str(folder))
    return folder


@pytest.mark.slow
def test_the_rewrite_drops_only_the_dummy_prefix_strip_and_keeps_transformers_encoding(tmp_path):
    from transformers import AutoTokenizer

    folder = _saved_by_transformers("phi-3-mini", tmp_path / "phi3")
    before = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    assert tokenization.needs_prefix_rewrite(before)  # Metaspace "first" + decoder Replace/Strip
    encode = tokenization.exact_encoder(folder)
    expected = [encode(text) for text in TEXTS]
    assert tokenization.rewrite_for_genai(folder)
    after = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    assert [s["type"] for s in after["decoder"]["decoders"]] == [
        s["type"] for s in before["decoder"]["decoders"] if s["type"] != "Strip"
    ]
    assert {k: v for k, v in after.items() if k != "decoder"} == {k: v for k, v in before.items() if k != "decoder"}
    assert not tokenization.rewrite_for_genai(folder)  # once only
    assert not list(folder.glob(".*.tmp"))
    # the encoding, the runtime's and transformers', is the decoder's business not at all
    rewritten = tokenization.exact_encoder(folder)
    tok = AutoTokenizer.from_pretrained(str(folder))
    for text, ids in zip(TEXTS, expected, strict=True):
        assert rewritten(text) == ids == tok(text, add_special_tokens=False)["input_ids"]
    assert ids and expected[0][1] == tok.convert_tokens_to_ids("What")  # no '▁' after <|user|>


@pytest.mark.slow
def test_byte_level_tokenizers_are_left_alone(tmp_path):
    from architectures import make_tiny

    make_tiny.make_tokenizer("qwen2.5").save_pretrained(str(tmp_path / "qwen"))  # GPT-2's byte-level BPE
    data = json.loads((tmp_path / "qwen" / "tokenizer.json").read_text(encoding="utf-8"))
    assert not tokenization.needs_prefix_rewrite(data)
    assert not tokenization.rewrite_for_genai(tmp_path / "qwen")


def test_without_a_tokenizer_json_the_runtime_keeps_onnxruntime_genai_tokenizer(tmp_path):
    assert tokenization.exact_encoder(tmp_path) is None
    assert not tokenization.rewrite_for_genai(tmp_path)
