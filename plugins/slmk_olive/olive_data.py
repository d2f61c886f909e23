"""Calibration data from the user's own file, as an Olive data component.

Olive 0.13's GPTQ pass takes a ``data_config``; its stock loaders either fetch a
hub data set (wikitext by default) or need the ``datasets`` package. slmk registers
``slmk_calibration_dataset`` instead, which reads a local file:

- ``.jsonl`` / ``.json``: ``{"messages": [...]}`` chat records, rendered with the
  model's own chat template, or ``{"text": "..."}`` records;
- ``.txt``: plain text, cut into windows of ``max_seq_len`` tokens.

A workflow names ``olive_user_script.py`` as its ``user_script``; Olive imports that
file by path and it calls ``register()``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CALIBRATION_DATASET = "slmk_calibration_dataset"
CALIBRATION_SUFFIXES = (".jsonl", ".json", ".txt")


class CalibrationError(ValueError):
    """The calibration file cannot be used; the message says where and why."""


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a calibration file: each ``{"messages": [...]}`` or ``{"text": ...}``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CALIBRATION_SUFFIXES:
        raise CalibrationError(
            f"{path.name}: unsupported calibration file type {suffix or '(none)'}; "
            f"use {', '.join(CALIBRATION_SUFFIXES)}"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"{path}: cannot read: {exc}") from exc
    if suffix == ".txt":
        return [{"text": text}] if text.strip() else []
    if suffix == ".json" and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except ValueError as exc:
            raise CalibrationError(f"{path.name}: invalid JSON: {exc}") from exc
        numbered = list(enumerate(items, 1))
    else:
        numbered = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                numbered.append((number, json.loads(line)))
            except ValueError as exc:
                raise CalibrationError(f"{path.name} line {number}: invalid JSON: {exc}") from exc
    records = []
    for number, item in numbered:
        if isinstance(item, dict) and isinstance(item.get("messages"), list) and item["messages"]:
            records.append({"messages": item["messages"]})
        elif isinstance(item, dict) and isinstance(item.get("text"), str):
            records.append({"text": item["text"]})
        else:
            raise CalibrationError(f'{path.name} record {number}: expected {{"messages": [...]}} or {{"text": ...}}')
    return records


def render_texts(records: list[dict[str, Any]], tokenizer) -> list[str]:
    """Chat records become the text the model sees, through its own chat template."""
    texts = []
    for record in records:
        if "text" in record:
            texts.append(record["text"])
            continue
        if not getattr(tokenizer, "chat_template", None):
            raise CalibrationError(
                "the calibration data holds chat records but the model has no chat template; "
                'use {"text": ...} records or a .txt file'
            )
        texts.append(tokenizer.apply_chat_template(record["messages"], tokenize=False))
    return [text for text in texts if text.strip()]


def token_samples(texts: list[str], tokenizer, max_seq_len: int, max_samples: int) -> list[list[int]]:
    """Token id lists of at most ``max_seq_len``; a long text gives several windows."""
    samples: list[list[int]] = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids), max_seq_len):
            window = ids[start : start + max_seq_len]
            if len(window) > 1:
                samples.append(window)
            if len(samples) >= max_samples:
                return samples
    return samples


def calibration_dataset(
    data_files: str,
    model_name: str,
    max_seq_len: int = 512,
    max_samples: int = 128,
    trust_remote_code: bool = False,
    **_: Any,
):
    """An Olive ``load_dataset`` component: ``(inputs, label)`` pairs of one sample each."""
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_name, trust_remote_code=trust_remote_code)
    samples = token_samples(render_texts(read_records(data_files), tokenizer), tokenizer, max_seq_len, max_samples)
    if not samples:
        raise CalibrationError(f"{Path(data_files).name}: no calibration text found")
    # Each item is one sequence; Olive's default dataloader adds the batch dimension.
    return [
        ({"input_ids": torch.tensor(ids), "attention_mask": torch.ones(len(ids), dtype=torch.long)}, 0)
        for ids in samples
    ]


def register() -> None:
    """Make the component known to Olive's data registry."""
    from olive.data.registry import Registry

    Registry.register_dataset(CALIBRATION_DATASET)(calibration_dataset)
