"""A Hugging Face folder loaded by transformers: chat, encode, score and logits, like a build's session.

The prompt is rendered by slmk's own sandboxed renderer from the folder's chat template and
tokenized as ``apply_chat_template`` does (no special tokens added to the rendered text), so
the ids a build is checked with are the ones transformers gives the model.
"""

from __future__ import annotations

import gc
import importlib.util
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from slmk.api import FORMAT_HF, GenerationStats, LoadRequest, ModelInfo, SlmkError, UsageError
from slmk.api.models import check_messages
from slmk.api.templates import render_chat_template, special_tokens_for

#: Search options this runtime honours; any other is refused.
SEARCH_OPTIONS = (
    "max_new_tokens",
    "max_length",
    "min_length",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "random_seed",
)
#: dtypes a caller may ask for (``dtype`` load option); float32 computes as the fp32 build does.
DTYPES = ("float32", "bfloat16", "float16", "auto")
#: Tokens fed per forward pass when scoring: bounds the logits held (chunk x vocab).
SCORE_CHUNK = 128
#: Below this many parameters a model runs on one torch thread: its matrices are too small to
#: share, and on a busy machine OpenMP's spinning threads made a 10M model's decode 6x slower.
ONE_THREAD_PARAMETERS = 50_000_000


def missing_packages() -> list[str]:
    """The packages this runtime needs that are not installed (found without importing them)."""
    return [name for name in ("torch", "transformers") if importlib.util.find_spec(name) is None]


def can_load(path: Path) -> str | None:
    """Why transformers cannot load ``path`` here, or None."""
    folder = Path(path)
    missing = missing_packages()
    if missing:
        return f"{' and '.join(missing)} not installed (pip install 'slmk[convert]')"
    if (folder / "genai_config.json").is_file():
        return "it is an ONNX build, not a Hugging Face folder"
    if not (folder / "config.json").is_file():
        return "no config.json"
    if not any(folder.glob("*.safetensors")):
        if any(folder.glob("pytorch_model*.bin")):
            return "its weights are pickles (pytorch_model*.bin), which can run code; transformers reads safetensors"
        return "no *.safetensors weights"
    return None


def load(request: LoadRequest) -> TransformersSession:
    reason = can_load(request.path)
    if reason:
        raise UsageError(f"transformers cannot load {request.path}: {reason}", hint="pass a Hugging Face model folder")
    return TransformersSession(request.path, request.options)


def _eos_ids(info: ModelInfo, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for value in (info.generation_config.get("eos_token_id"), info.config.get("eos_token_id"), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(int(v) for v in value if isinstance(v, int))
    return frozenset(ids)


class TransformersSession:
    """The source model, loaded once: ``generate`` streams text, ``logits`` serves verification."""

    def __init__(self, path: Path, options: Mapping[str, Any] | None = None):
        options = dict(options or {})
        dtype_name = str(options.pop("dtype", "float32"))
        threads = options.pop("threads", None)
        if options:
            raise UsageError(
                f"unknown runtime option(s) {', '.join(sorted(options))} for transformers",
                hint="it takes dtype and threads",
            )
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise UsageError(f"threads must be an integer >= 1, not {threads!r}")
        if dtype_name not in DTYPES:
            raise UsageError(f"dtype {dtype_name!r} is not one of {', '.join(DTYPES)}")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # a bar per load would garble slmk's own progress

        self.path = Path(path)
        self.info = ModelInfo.load(self.path)
        if self.info.format != FORMAT_HF:
            raise UsageError(f"{self.path} is not a Hugging Face folder", hint="the transformers runtime runs sources")
        self.last_stats: GenerationStats | None = None
        self.last_token_ids: list[int] = []
        self.context_length: int = int(self.info.context_length or 0)
        self._torch = torch
        small = (self.info.num_parameters or 0) < ONE_THREAD_PARAMETERS
        self.threads: int = threads or (1 if small else torch.get_num_threads())
        dtype = "auto" if dtype_name == "auto" else getattr(torch, dtype_name)
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(self.path), trust_remote_code=False)
            self._model = AutoModelForCausalLM.from_pretrained(
                str(self.path), dtype=dtype, low_cpu_mem_usage=True, trust_remote_code=False, use_safetensors=True
            )
        except Exception as exc:
            raise SlmkError(
                f"transformers cannot load {self.path}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                hint="check that the folder is what save_pretrained wrote, for an architecture transformers knows",
            ) from exc
        self._model.eval()
        # transformers 5 renamed the key/value cache argument (past_key_values -> cache)
        import inspect

        self._cache_argument = "cache" if "cache" in inspect.signature(self._model.forward).parameters else None
        self.dtype = str(self._model.dtype).removeprefix("torch.")
        self.eos_token_ids = _eos_ids(self.info, self._tokenizer)
        self._cached_ids: list[int] = []  # the ids whose keys and values _past holds
        self._past: Any = None

    # ------------------------------------------------------------ text
    def _require_open(self) -> None:
        if self._model is None:
            raise SlmkError("this session is closed", hint="load the model again")

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` as ``apply_chat_template(tokenize=True)`` makes them: no special tokens added."""
        self._require_open()
        return [int(t) for t in self._tokenizer(text, add_special_tokens=False)["input_ids"]]

    def decode(self, token_ids: Sequence[int]) -> str:
        self._require_open()
        return self._tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def render_prompt(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The prompt the folder's own chat template makes of ``messages`` (slmk's bounded renderer)."""
        check_messages(messages)
        if not self.info.chat_template:
            raise SlmkError(f"{self.path} has no chat template", hint="add chat_template to tokenizer_config.json")
        return render_chat_template(
            self.info.chat_template, messages, special_tokens=special_tokens_for(self.info), add_generation_prompt=True
        )

    # ------------------------------------------------------------ logits
    def logits(self, token_ids: Sequence[int], start: int = 0):
        """Teacher-forced logits (float32 numpy, one row per position from ``start``) of ``token_ids``.

        Row r predicts the token after position ``start + r``. A call whose ids extend the
        previous call's feeds only the new ones (the keys and values are kept), so a greedy
        loop of one-row calls costs one token per step.
        """
        import numpy as np

        self._require_open()
        ids = [int(t) for t in token_ids]
        if not 0 <= start < len(ids):
            raise UsageError(f"start {start} is outside the {len(ids)} ids given")
        cached = self._cached_ids
        reuse = self._past is not None and len(cached) <= start and ids[: len(cached)] == cached
        offset = len(cached) if reuse else 0
        torch = self._torch
        threads = torch.get_num_threads()
        if threads != self.threads:
            torch.set_num_threads(self.threads)  # process-wide in torch: restored below
        try:
            rows, past = self._forward(ids, offset, start, self._past if reuse else None)
        finally:
            if threads != self.threads:
                torch.set_num_threads(threads)
        self._past, self._cached_ids = past, ids
        return np.concatenate(rows, axis=0)

    def _forward(self, ids: list[int], offset: int, start: int, past: Any) -> tuple[list[Any], Any]:
        torch = self._torch
        rows = []
        with torch.inference_mode():
            for begin in range(offset, len(ids), SCORE_CHUNK):
                chunk = ids[begin : begin + SCORE_CHUNK]
                cache = {self._cache_argument or "past_key_values": past}
                out = self._model(input_ids=torch.tensor([chunk]), use_cache=True, **cache)
                past = getattr(out, self._cache_argument or "past_key_values")
                keep = max(0, start - begin)
                if keep < len(chunk):
                    rows.append(out.logits[0, keep:].float().numpy())
        return rows, past

    def score(self, text: str) -> tuple[float, int]:
        """Teacher-forced negative log-likelihood of ``text``: (sum in nats, tokens scored).

        Texts longer than the context are scored in windows that overlap by half, each token
        once, as the build's runtime scores them.
        """
        self._require_open()
        ids = [int(t) for t in self._tokenizer(text)["input_ids"]]
        if len(ids) < 2:
            return 0.0, 0
        window = min(self.context_length or len(ids), len(ids))
        stride = max(1, window // 2)
        total, count, scored_until, begin = 0.0, 0, 1, 0
        while scored_until < len(ids):
            end = min(begin + window, len(ids))
            first = max(scored_until, begin + 1)
            self._forget()
            rows = self._torch.from_numpy(self.logits(ids[begin:end], first - 1 - begin)[: end - first]).double()
            targets = self._torch.tensor(ids[first:end])
            total += float(self._torch.nn.functional.cross_entropy(rows, targets, reduction="sum"))
            count += len(targets)
            scored_until = end
            if end == len(ids):
                break
            begin += stride
        self._forget()
        return total, count

    def perplexity(self, text: str) -> float:
        nll, count = self.score(text)
        return math.exp(nll / count) if count else float("nan")

    def _forget(self) -> None:
        self._past, self._cached_ids = None, []

    # ------------------------------------------------------------ generate
    def generate(self, messages: list[Mapping[str, str]], **search: Any) -> Iterator[str]:
        """Stream the answer to ``messages`` (greedy unless ``do_sample``); bad options raise here."""
        search = {k: v for k, v in search.items() if v is not None}
        unknown = sorted(set(search) - set(SEARCH_OPTIONS))
        if unknown:
            raise UsageError(
                f"unknown search option(s) {', '.join(unknown)} for transformers",
                hint=f"use {', '.join(SEARCH_OPTIONS)}",
            )
        prompt_ids = self.encode(self.render_prompt(messages))
        context = self.context_length or len(prompt_ids) + 256
        if len(prompt_ids) >= context:
            raise SlmkError(
                f"the prompt has {len(prompt_ids)} tokens and the model's context holds {context}",
                hint="shorten the conversation",
            )
        limit = context
        if "max_length" in search:
            limit = min(limit, int(search["max_length"]))
        if "max_new_tokens" in search:
            limit = min(limit, len(prompt_ids) + int(search["max_new_tokens"]))
        if limit <= len(prompt_ids):
            raise UsageError(f"no room to answer a prompt of {len(prompt_ids)} tokens within {limit} tokens")
        return self._stream(prompt_ids, limit - len(prompt_ids), search)

    def _next_token(self, row, produced: list[int], search: Mapping[str, Any], generator) -> int:
        torch = self._torch
        logits = torch.from_numpy(row).double()
        penalty = float(search.get("repetition_penalty") or 1.0)
        if penalty != 1.0 and produced:
            seen = torch.tensor(sorted(set(produced)))
            values = logits[seen]
            logits[seen] = torch.where(values > 0, values / penalty, values * penalty)
        if len(produced) < int(search.get("min_length_new", 0)):
            for eos in self.eos_token_ids:
                logits[eos] = -math.inf
        if not search.get("do_sample"):
            return int(torch.argmax(logits))
        temperature = float(search.get("temperature") or 1.0)
        logits = logits / max(temperature, 1e-6)
        top_k = int(search.get("top_k") or 0)
        if top_k:
            floor = torch.topk(logits, min(top_k, logits.numel())).values[-1]
            logits[logits < floor] = -math.inf
        probs = torch.softmax(logits, dim=-1)
        top_p = float(search.get("top_p") or 1.0)
        if top_p < 1.0:
            ordered, order = torch.sort(probs, descending=True)
            drop = torch.cumsum(ordered, dim=-1) - ordered > top_p
            probs[order[drop]] = 0.0
            probs = probs / probs.sum()
        return int(torch.multinomial(probs, 1, generator=generator))

    def _stream(self, prompt_ids: list[int], new_token_limit: int, search: dict[str, Any]) -> Iterator[str]:
        torch = self._torch
        generator = torch.Generator().manual_seed(int(search.get("random_seed", 0)))
        search = {**search, "min_length_new": max(0, int(search.get("min_length") or 0) - len(prompt_ids))}
        start = time.perf_counter()
        first_token_at = None
        produced: list[int] = []
        self.last_stats = None
        self.last_token_ids = produced
        text = ""
        self._forget()
        try:
            ids = list(prompt_ids)
            while len(produced) < new_token_limit:
                row = self.logits(ids, len(ids) - 1)[-1]
                token = self._next_token(row, produced, search, generator)
                if first_token_at is None:
                    first_token_at = time.perf_counter()
                produced.append(token)
                ids.append(token)
                if token in self.eos_token_ids:
                    break
                now = self.decode([t for t in produced if t not in self.eos_token_ids])
                if now.startswith(text) and len(now) > len(text) and not now.endswith("\ufffd"):
                    yield now[len(text) :]
                    text = now
        finally:
            self._forget()
            end = time.perf_counter()
            self.last_stats = GenerationStats(
                prompt_tokens=len(prompt_ids),
                generated_tokens=len(produced),
                time_to_first_token_s=(first_token_at or end) - start,
                total_s=end - start,
            )

    # ------------------------------------------------------------ lifetime
    def close(self) -> None:
        self._forget()
        self._model = None
        self._tokenizer = None
        gc.collect()

    def __enter__(self) -> TransformersSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
