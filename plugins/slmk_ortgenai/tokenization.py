"""Prompt tokens as transformers makes them, and the build-side tokenizer.json rewrite for onnxruntime-genai.

onnxruntime-genai 0.18 tokenizes with onnxruntime-extensions, which reads a SentencePiece-style
tokenizer.json (Metaspace pre-tokenizer; decoder Replace "▁" -> " " ... Strip " ") as "add a
dummy prefix": it puts "▁" before the text after *every* special token, where transformers and
the tokenizers library (Metaspace ``prepend_scheme: "first"``) put it at the very start only.
``<|user|>What`` is ``['<|user|>', '▁What']`` there and ``['<|user|>', 'What']`` in transformers.

* slmk's own runtime encodes with the ``tokenizers`` library on the build's tokenizer.json (the
  Rust tokenizer behind transformers' fast tokenizers; a light import), special tokens split
  and nothing added, as transformers tokenizes a rendered chat prompt;
* a build's tokenizer.json loses the decoder's leading ``Strip``, the one thing onnxruntime-extensions
  takes its dummy prefix from: it then tokenizes a prompt that starts with a special token (every
  chat template of these families) as transformers does, which is what Foundry Local feeds the
  model. Its decoding is unchanged (it never stripped that space), and neither is the tokenizers
  library's encoding (the decoder plays no part in it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slmk.api.files import write_json_atomic

TOKENIZER_FILE = "tokenizer.json"
METASPACE = "\u2581"


def exact_encoder(folder: Path) -> Callable[[str], list[int]] | None:
    """``text -> ids`` as transformers' tokenizer gives them for a rendered chat prompt, or None.

    None where the build has no tokenizer.json or the tokenizers library is not installed (the
    runtime then keeps onnxruntime-genai's own tokenizer; ``slmk validate`` measures the difference).
    """
    path = Path(folder) / TOKENIZER_FILE
    if not path.is_file():
        return None
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return None
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception:  # a file the Rust library cannot read: onnxruntime-genai's reading stays
        return None

    def encode(text: str) -> list[int]:
        # add_special_tokens=False: a chat template writes its own BOS, and transformers'
        # apply_chat_template(tokenize=True) adds none either
        return list(tokenizer.encode(text, add_special_tokens=False).ids)

    return encode


def _is_dummy_prefix_strip(step: Any) -> bool:
    return (
        isinstance(step, dict)
        and step.get("type") == "Strip"
        and step.get("content") == " "
        and int(step.get("start") or 0) >= 1
    )


def needs_prefix_rewrite(tokenizer: dict[str, Any]) -> bool:
    """Whether onnxruntime-extensions would add a dummy prefix after every special token.

    It does for a SentencePiece-style tokenizer.json (decoder Replace "▁" -> " " and Strip " ")
    whose pre-tokenizer is Metaspace with ``prepend_scheme`` "first" (what transformers 5 writes),
    where transformers puts "▁" at the start only.
    """
    decoder = tokenizer.get("decoder") or {}
    steps = decoder.get("decoders") if decoder.get("type") == "Sequence" else [decoder]
    steps = [s for s in steps or [] if isinstance(s, dict)]
    replaces_metaspace = any(
        s.get("type") == "Replace" and (s.get("pattern") or {}).get("String") == METASPACE for s in steps
    )
    pre = tokenizer.get("pre_tokenizer") or {}
    metaspace = [pre] if pre.get("type") == "Metaspace" else []
    if pre.get("type") == "Sequence":
        metaspace = [p for p in pre.get("pretokenizers") or [] if isinstance(p, dict) and p.get("type") == "Metaspace"]
    return (
        replaces_metaspace
        and any(_is_dummy_prefix_strip(s) for s in steps)
        and any(m.get("prepend_scheme") == "first" for m in metaspace)
    )


def rewrite_for_genai(build: Path) -> bool:
    """Drop the dummy-prefix Strip from a build's tokenizer.json where :func:`needs_prefix_rewrite`;
    True when the file was rewritten."""
    path = Path(build) / TOKENIZER_FILE
    if not path.is_file():
        return False
    tokenizer = json.loads(path.read_text(encoding="utf-8"))
    if not needs_prefix_rewrite(tokenizer):
        return False
    decoder = tokenizer["decoder"]
    decoder["decoders"] = [s for s in decoder["decoders"] if not _is_dummy_prefix_strip(s)]
    write_json_atomic(path, tokenizer)
    return True
