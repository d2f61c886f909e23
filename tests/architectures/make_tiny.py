"""Tiny random models of each architecture slmk supports, made locally with transformers.

Each ``<name>.json`` next to this module holds one architecture's real ``config.json``
field set as the published model has it (written by transformers 4.x: ``rope_scaling``,
``torch_dtype``), with the dimensions shrunk but the heads of a real size (hidden 256,
2 layers, 4 heads of 64 and 2 or 4 KV heads, intermediate 512; OLMo 2 heads of 128,
Phi-4-mini 2 of 64; LongRoPE factor lists resampled to the rotary size) and everything that
changes the computation kept: rope scaling, sliding windows, tied or untied embeddings,
attention bias, q/k norms, soft-capping, multipliers, weightless layer norms.

``make_tiny_model(name, folder)`` builds the tokenizer named by the spec (files under
``tests/data/tokenizers/``, see their SOURCE.md), sizes the vocabulary to it, fills the
model with random weights from a fixed seed and saves it with ``save_pretrained``, which
writes the transformers-5 config (``rope_parameters``, ``dtype``). ``config_style="v4"``
then puts the spec's transformers-4.x ``config.json`` back in place of the saved one, so
both spellings that occur in the wild are built from the same weights.

Run it as a script to write every model: ``python tests/architectures/make_tiny.py OUT``.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "data"
TOKENIZERS = DATA / "tokenizers"
SEED = 1234
#: The random matrices' gain (std = gain / sqrt(fan-in)). transformers' default init (std
#: 0.02) gives nearly uniform logits on a 2-layer model, where float rounding between two
#: runtimes could flip a greedy pick among near-ties; unit-scale activations make each
#: greedy step decisive.
WEIGHT_GAIN = 2.0


def names() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.json"))


def spec(name: str) -> dict[str, Any]:
    return json.loads((HERE / f"{name}.json").read_text(encoding="utf-8"))


def _chat_template(relative: str) -> str:
    path = DATA / relative
    if path.suffix == ".json":  # a tokenizer_config.json: its chat_template
        return json.loads(path.read_text(encoding="utf-8"))["chat_template"]
    return path.read_text(encoding="utf-8")


def _gpt2_tokenizer(tokens: dict[str, Any], work: Path):
    """GPT-2's real byte-level BPE, with the family's special tokens added after its vocabulary."""
    from transformers import AutoTokenizer

    for file in ("vocab.json", "merges.txt"):
        shutil.copy(TOKENIZERS / "gpt2" / file, work / file)
    (work / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer"}), encoding="utf-8")
    tok = AutoTokenizer.from_pretrained(str(work))
    added = list(tokens.get("special_tokens") or [])
    source = tokens.get("special_tokens_from")
    if source:
        config = json.loads((DATA / source).read_text(encoding="utf-8"))
        added = [
            entry["content"] for _, entry in sorted(config["added_tokens_decoder"].items(), key=lambda kv: int(kv[0]))
        ]
    added = [t for t in added if t != "<|endoftext|>"]  # GPT-2 has it (id 50256)
    tok.add_special_tokens({"additional_special_tokens": added})
    for role in ("bos_token", "eos_token", "pad_token"):
        setattr(tok, role, tokens.get(role))
    tok.unk_token = None
    return tok


def _mistral_tokenizer(work: Path):
    """Mistral v0.3's real SentencePiece model, converted by transformers to a fast tokenizer."""
    from transformers import AutoTokenizer

    shutil.copy(TOKENIZERS / "mistral-v0.3" / "tokenizer.model", work / "tokenizer.model")
    shutil.copy(TOKENIZERS / "mistral-v0.3" / "tokenizer_config.json", work / "tokenizer_config.json")
    return AutoTokenizer.from_pretrained(str(work))


def make_tokenizer(name: str):
    """The tokenizer of the architecture's spec, with its chat template set."""
    from transformers import AutoTokenizer

    tokens = spec(name)["tokenizer"]
    kit = tokens["kit"]
    with tempfile.TemporaryDirectory(prefix="slmk-tok-") as tmp:
        if kit == "gpt2":
            tok = _gpt2_tokenizer(tokens, Path(tmp))
        elif kit == "mistral-v0.3":
            tok = _mistral_tokenizer(Path(tmp))
        else:  # a folder with the real tokenizer.json and tokenizer_config.json
            tok = AutoTokenizer.from_pretrained(str(TOKENIZERS / kit))
    if tokens.get("chat_template"):
        tok.chat_template = _chat_template(tokens["chat_template"])
    return tok


def _token_id(tok, value):
    if value is None:
        return None
    if isinstance(value, list):
        return [_token_id(tok, v) for v in value]
    token_id = tok.convert_tokens_to_ids(value)
    if token_id is None or (token_id == tok.unk_token_id and value != tok.unk_token):
        raise ValueError(f"{value!r} is not a token of this tokenizer")
    return token_id


def make_tiny_model(name: str, folder: str | Path, *, config_style: str = "v5") -> Path:
    """Write the tiny ``name`` model (weights, config, tokenizer, generation config) to ``folder``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    if config_style not in ("v4", "v5"):
        raise ValueError(f"config_style is v4 or v5, not {config_style!r}")
    data = spec(name)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(name)
    fields = dict(data["config"])
    fields["vocab_size"] = len(tok)
    for key, value in data.get("token_ids", {}).items():
        fields[key] = _token_id(tok, value)
    model_type = fields["model_type"]
    config = AutoConfig.for_model(
        model_type, **{k: v for k, v in fields.items() if k not in ("model_type", "torch_dtype")}
    )
    torch.manual_seed(SEED)
    with torch.no_grad():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        for param in model.parameters():
            if param.dim() > 1:  # matrices; norms keep their ones (Gemma's zeros) and biases their zeros
                param.normal_(0.0, WEIGHT_GAIN / param.shape[-1] ** 0.5)
    eos = data.get("generation_eos")
    generation = GenerationConfig(
        bos_token_id=fields.get("bos_token_id"),
        eos_token_id=_token_id(tok, eos) if eos else fields.get("eos_token_id"),
        pad_token_id=fields.get("pad_token_id"),
        do_sample=False,
    )
    model.generation_config = generation
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    if config_style == "v4":
        # what transformers 4.x wrote: the published field names, float32 weights
        saved = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        v4 = {**fields, "torch_dtype": "float32", "transformers_version": "4.51.3"}
        for key in ("bos_token_id", "eos_token_id", "pad_token_id", "vocab_size"):
            if key in saved or key in fields:
                v4[key] = fields.get(key, saved.get(key))
        (folder / "config.json").write_text(json.dumps(v4, indent=2) + "\n", encoding="utf-8")
    return folder


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-models")
    for arch in sys.argv[2:] or names():
        print(arch, make_tiny_model(arch, out / arch))
