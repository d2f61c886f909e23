"""Continuous batching: many sequences decoded together on one loaded copy of a build's weights.

onnxruntime-genai 0.18 offers two ways to decode several sequences at once, and neither
lets a request join a running batch (measured, see docs/serve.md "Batching"):

- ``og.Engine`` fails every request (``ENGINE_EXECUTION_FAILURE``) on builds whose graph
  gives the logits of the last position only (``prune_lm_head``, slmk's int4/int8 default):
  its static-batch decoder allocates logits for every prompt position. On a build with
  every position's logits it runs, but a request added while others decode waits until the
  whole batch has finished (its static KV cache is sized when the batch starts).
- ``GeneratorParams`` with a batch size: sequences start together and end together.

So slmk drives the build's decoder graph with onnxruntime itself and keeps one KV cache
per sequence. The graph's GroupQueryAttention reads each sequence's length from its row
of the attention mask (``seqlens_k``), and computes rotary positions from it, so sequences
of different lengths step together: their caches are right-padded to the longest, the
mask says how much of each row is real, and each new token lands at its own sequence's
end. A prompt is fed alone (in chunks of PREFILL_CHUNK tokens), then its cache joins the
batch; a finished or cancelled sequence leaves at once and its cache rows are dropped.
Memory grows with the sequences' caches only: there is one InferenceSession.

Sampling is per sequence, in numpy, on the step's logits: greedy, or temperature / top_k /
top_p with the sequence's own seeded generator, repetition penalty and min_length.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from slmk.api import ExecutionProvider, GenerationStats, SlmkError, UsageError
from slmk.api.models import SEARCH_OPTIONS, read_genai_config

from .errors import first_line
from .runtime import PREFILL_CHUNK, OrtGenAISession, _min_cache_length, check_search_values

#: Search options a batched sequence honours (the others are refused when asked for).
BATCHED_SEARCH = frozenset(
    {
        "max_length",
        "max_new_tokens",
        "min_length",
        "random_seed",
        "do_sample",
        "temperature",
        "top_p",
        "top_k",
        "repetition_penalty",
        "truncate",
    }
)


def batching_problem(path: Path) -> str | None:
    """Why the build's decoder cannot be stepped in batches here, or None."""
    from .adapters import lora_inputs

    if lora_inputs(path):
        return "it was built for separate LoRA adapters"
    config = read_genai_config(path)
    decoder = (config.get("model") or {}).get("decoder") or {}
    inputs = decoder.get("inputs") or {}
    if set(inputs) - {"input_ids", "attention_mask", "past_key_names", "past_value_names"}:
        return f"its decoder takes {', '.join(sorted(set(inputs) - {'input_ids', 'attention_mask'}))}"
    if _min_cache_length(config):
        return "it has sliding-window layers"
    if "pipeline" in decoder or not decoder.get("filename"):
        return "its decoder is not one graph"
    if (decoder.get("session_options") or {}).get("provider_options"):
        return "it runs on an execution provider other than the CPU"
    return None


class BatchedSequence:
    """One request in a batch: its prompt, sampling options, cache rows and output so far."""

    def __init__(self, prompt_ids: list[int], search: dict[str, Any], new_token_limit: int, eos: frozenset[int]):
        import numpy as np

        self.prompt_ids = prompt_ids
        self.new_token_limit = new_token_limit
        self.tokens: list[int] = []  # generated, eos included
        self.done = False
        self.finish_reason = ""  # "stop" (an end token) or "length"
        self.started = time.perf_counter()
        self.first_token_at: float | None = None
        self.ended_at: float | None = None
        self.cache: list[Any] | None = None  # this sequence's KV (after prefill, until it joins)
        self.length = 0  # tokens in its cache
        self._eos = eos
        self._stream = None  # the tokenizer's incremental decoder
        self._greedy = not search.get("do_sample", False)
        self._temperature = float(search.get("temperature", 1.0) or 1.0)
        self._top_k = int(search.get("top_k", 0) or 0)
        self._top_p = float(search.get("top_p", 1.0) or 1.0)
        self._penalty = float(search.get("repetition_penalty", 1.0) or 1.0)
        self._min_new = max(0, int(search.get("min_length", 0) or 0) - len(prompt_ids))
        seed = search.get("random_seed")
        self._random = np.random.default_rng(None if seed is None or seed < 0 else seed)

    @property
    def stats(self) -> GenerationStats:
        end = self.ended_at or time.perf_counter()
        return GenerationStats(
            prompt_tokens=len(self.prompt_ids),
            generated_tokens=len(self.tokens),
            time_to_first_token_s=(self.first_token_at or end) - self.started,
            total_s=end - self.started,
        )

    def sample(self, logits) -> int:
        """The next token from this sequence's row of logits, by its own options."""
        import numpy as np

        row = np.asarray(logits, dtype=np.float32).copy()
        if self._penalty != 1.0:
            seen = np.unique(np.asarray(self.prompt_ids + self.tokens, dtype=np.int64))
            values = row[seen]
            row[seen] = np.where(values > 0, values / self._penalty, values * self._penalty)
        if len(self.tokens) < self._min_new:
            row[list(self._eos)] = -np.inf
        if self._greedy:
            return int(np.argmax(row))
        row = row / max(self._temperature, 1e-6)
        order = np.argsort(-row)
        if self._top_k:
            order = order[: self._top_k]
        chosen = row[order]
        probabilities = np.exp(chosen - chosen.max())
        probabilities /= probabilities.sum()
        if self._top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(probabilities), self._top_p) + 1)
            order, probabilities = order[:keep], probabilities[:keep] / probabilities[:keep].sum()
        return int(order[self._random.choice(len(order), p=probabilities)])

    def accept(self, token: int, decode) -> str:
        """Record ``token``; the text it completes ('' for an end token or a partial character)."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.tokens.append(token)
        if token in self._eos:
            self.done, self.finish_reason = True, "stop"
        elif len(self.tokens) >= self.new_token_limit:
            self.done, self.finish_reason = True, "length"
        if self.done:
            self.ended_at = time.perf_counter()
        return "" if token in self._eos else decode(self, token)


class BatchingSession(OrtGenAISession):
    """A build loaded once for batched decoding: ``begin`` a sequence, ``advance`` them all a token.

    Not thread-safe: one thread (the server's scheduler) calls ``advance``. ``generate``
    (the ChatSession API) runs a batch of one.
    """

    runtime_label = "batched ortgenai"
    option_names = ("truncate",)

    def __init__(
        self,
        path: Path,
        execution_provider: ExecutionProvider,
        max_batch: int,
        options: Mapping[str, Any] | None = None,
    ):
        self.max_batch = int(max_batch)
        if self.max_batch < 1:
            raise UsageError(f"max_batch must be at least 1, not {max_batch}")
        self._read_build(path, execution_provider, options)
        self.min_cache_length = 0  # batching_problem() refused sliding-window builds
        self._load()
        self._ready()
        self._solo: OrtGenAISession | None = None
        self.batched_search = BATCHED_SEARCH | {"tools"}  # tools only shape the prompt
        self._rows: list[BatchedSequence] = []  # the sequences in the batch cache, in row order
        self._cache: list[Any] = []  # per past input: [rows, kv_heads, width, head_size]
        self._lock = threading.Lock()

    def _load(self) -> None:
        """The decoder graph in a plain onnxruntime session (stepped here), og's tokenizer."""
        import numpy as np
        import onnxruntime as ort
        import onnxruntime_genai as og

        self._np = np
        self._og = og
        decoder = (self._config.get("model") or {}).get("decoder") or {}
        names = decoder.get("inputs") or {}
        outputs = decoder.get("outputs") or {}
        layers = int(decoder.get("num_hidden_layers") or 0)
        self._input_ids = names.get("input_ids", "input_ids")
        self._mask = names.get("attention_mask", "attention_mask")
        self._past = [
            name % layer
            for layer in range(layers)
            for name in (
                names.get("past_key_names", "past_key_values.%d.key"),
                names.get("past_value_names", "past_key_values.%d.value"),
            )
        ]
        self._present = [
            name % layer
            for layer in range(layers)
            for name in (
                outputs.get("present_key_names", "present.%d.key"),
                outputs.get("present_value_names", "present.%d.value"),
            )
        ]
        self._logits = outputs.get("logits", "logits")
        try:
            session_options = ort.SessionOptions()
            threads = (decoder.get("session_options") or {}).get("intra_op_num_threads")
            if threads:
                session_options.intra_op_num_threads = int(threads)
            session_options.log_severity_level = 3
            providers = ["CPUExecutionProvider"]
            self._session = ort.InferenceSession(
                str(self.path / decoder.get("filename", "model.onnx")), session_options, providers=providers
            )
            self._tokenizer = og.Tokenizer(str(self.path))
        except Exception as exc:
            raise SlmkError(
                f"onnxruntime cannot load {self.path} for batching: {first_line(exc)}", hint=self._load_hint()
            ) from exc
        self._model = self._session  # "open" for the shared helpers (encode, render_prompt ...)
        past_input = next(i for i in self._session.get_inputs() if i.name == self._past[0])
        self._kv_heads, self._head_size = int(past_input.shape[1]), int(decoder.get("head_size") or 0)
        if past_input.type != "tensor(float)":
            raise SlmkError(f"{self.path}: batching reads float32 caches, this build has {past_input.type}")

    # ------------------------------------------------------------ sequences
    def begin(self, messages: Sequence[Mapping[str, Any]], **search: Any) -> BatchedSequence:
        """A new sequence for ``messages`` (and ``tools``, OpenAI function tools for the chat template):
        options checked, prompt rendered; the model has not run yet."""
        tools = search.pop("tools", None)
        prompt = self.render_prompt(messages, tools) if tools else self.render_prompt(messages)
        return self.begin_ids(self.encode(prompt), **search)

    def begin_ids(self, prompt_ids: Sequence[int], **search: Any) -> BatchedSequence:
        self._require_open()
        if search.get("adapter"):
            raise UsageError("batched generation takes no adapter", hint="serve the adapter's merged build")
        search.pop("adapter", None)
        unknown = sorted(set(search) - set(SEARCH_OPTIONS))
        if unknown:
            raise UsageError(f"unknown search option(s) {', '.join(unknown)}", hint=f"use {', '.join(SEARCH_OPTIONS)}")
        refused = sorted(k for k, v in search.items() if v is not None and k not in BATCHED_SEARCH)
        if refused:
            raise UsageError(f"batched generation does not take {', '.join(refused)}")
        check_search_values(search)
        merged = {k: v for k, v in self.default_search.items() if k in BATCHED_SEARCH}
        merged.update({k: v for k, v in search.items() if v is not None})
        ids, plan, limit = self._plan([int(t) for t in prompt_ids], merged)
        sequence = BatchedSequence(ids, plan, limit, self.eos_token_ids)
        sequence._stream = self._tokenizer.create_stream()
        return sequence

    def advance(self, sequences: Sequence[BatchedSequence]) -> dict[BatchedSequence, str]:
        """One token for every sequence in ``sequences`` (new ones are fed their prompt, then join); their text.

        A sequence of the batch left out of ``sequences`` is paused: its row runs along
        (a batch is one call) but its token is discarded and its length kept, so the next
        step it takes overwrites that cache position. Finished sequences leave the batch.
        """
        np = self._np
        with self._lock:
            wanted = {id(s) for s in sequences if not s.done}
            texts: dict[BatchedSequence, str] = {}
            if self._rows:
                rows = self._rows
                last = np.asarray([[s.tokens[-1]] for s in rows], dtype=np.int64)
                # each row's mask covers its own tokens: GroupQueryAttention takes a row's
                # length (and the new token's position) from it, so padding is never read
                mask = np.zeros((len(rows), max(s.length for s in rows) + 1), dtype=np.int64)
                for row, s in enumerate(rows):
                    mask[row, : s.length + 1] = 1
                outputs = self._run(last, mask, self._cache)
                logits, self._cache = outputs[0][:, -1, :], outputs[1:]
                for row, s in enumerate(rows):
                    if id(s) in wanted:
                        s.length += 1
                        texts[s] = s.accept(s.sample(logits[row]), self._decode)
            for sequence in sequences:
                if not sequence.done and sequence not in texts and sequence not in self._rows:
                    logits = self._prefill(sequence)  # new: its prompt alone, then it joins the batch
                    texts[sequence] = sequence.accept(sequence.sample(logits), self._decode)
                    if not sequence.done:
                        self._join(sequence)
            self._keep({id(s) for s in self._rows if not s.done})
            return texts

    def release(self, sequence: BatchedSequence) -> None:
        """Drop a sequence's cache now (cancelled): the next step runs without it."""
        with self._lock:
            sequence.done = True
            sequence.cache = None
            self._keep({id(s) for s in self._rows if s is not sequence and not s.done})

    @property
    def batch_size(self) -> int:
        return len(self._rows)

    # ------------------------------------------------------------ model calls
    def _run(self, input_ids, mask, cache) -> list[Any]:
        feed = {self._input_ids: input_ids, self._mask: mask}
        feed.update(zip(self._past, cache))
        try:
            return self._session.run([self._logits, *self._present], feed)
        except Exception as exc:
            raise SlmkError(f"generation failed: {first_line(exc)}", hint=self._load_hint()) from exc

    def _empty_cache(self, rows: int, width: int = 0) -> list[Any]:
        shape = (rows, self._kv_heads, width, self._head_size)
        return [self._np.zeros(shape, dtype=self._np.float32) for _ in self._past]

    def _prefill(self, sequence: BatchedSequence):
        np = self._np
        cache = self._empty_cache(1)
        ids = sequence.prompt_ids
        logits = None
        for begin in range(0, len(ids), PREFILL_CHUNK):
            chunk = np.asarray([ids[begin : begin + PREFILL_CHUNK]], dtype=np.int64)
            mask = np.ones((1, begin + chunk.shape[1]), dtype=np.int64)
            outputs = self._run(chunk, mask, cache)
            logits, cache = outputs[0][0, -1, :], outputs[1:]
        sequence.cache, sequence.length = cache, len(ids)
        return logits

    def _join(self, sequence: BatchedSequence) -> None:
        """Append a prefilled sequence's cache as a new row, right-padded to the batch's width."""
        np = self._np
        mine = sequence.cache
        sequence.cache = None
        if not self._rows:
            self._rows, self._cache = [sequence], mine
            return
        width = max(self._cache[0].shape[2], mine[0].shape[2])
        self._cache = [np.concatenate([_pad(a, width), _pad(b, width)], axis=0) for a, b in zip(self._cache, mine)]
        self._rows.append(sequence)

    def _keep(self, keep: set[int]) -> None:
        """Drop the rows of sequences not in ``keep``, and the cache columns no row uses any more."""
        rows = [i for i, s in enumerate(self._rows) if id(s) in keep and not s.done]
        if len(rows) == len(self._rows):
            return
        self._rows = [self._rows[i] for i in rows]
        if not self._rows:
            self._cache = []
            return
        width = max(s.length for s in self._rows)
        self._cache = [self._np.ascontiguousarray(a[rows, :, :width, :]) for a in self._cache]

    def _decode(self, sequence: BatchedSequence, token: int) -> str:
        return sequence._stream.decode(token)

    # ------------------------------------------------------------ ChatSession
    def generate(self, messages: list[Mapping[str, str]], **search: Any) -> Iterator[str]:
        return self._alone(self.begin(messages, **search))

    def generate_ids(self, prompt_ids: Sequence[int], **search: Any) -> Iterator[str]:
        return self._alone(self.begin_ids(prompt_ids, **search))

    def _alone(self, sequence: BatchedSequence) -> Iterator[str]:
        self.last_stats = None
        self.last_token_ids = sequence.tokens
        try:
            while not sequence.done:
                text = self.advance([sequence]).get(sequence, "")
                if text:
                    yield text
        finally:
            if not sequence.done:
                self.release(sequence)
            sequence.ended_at = sequence.ended_at or time.perf_counter()
            self.last_stats = sequence.stats

    def score(self, text: str, **kwargs: Any):
        raise SlmkError("a batching session does not score", hint="load the build without max_batch")

    def solo(self) -> OrtGenAISession:
        """A plain session of the same build, for the requests a batch cannot take (loaded at first use:
        it holds a second copy of the weights)."""
        if self._solo is None:
            self._solo = OrtGenAISession(self.path, self.execution_provider, {"truncate": self.truncate})
        return self._solo

    def close(self) -> None:
        if self._solo is not None:
            self._solo.close()
            self._solo = None
        with self._lock:
            self._rows, self._cache = [], []
        self._tokenizer = None
        self._session = None
        self._model = None


def _pad(array, width: int):
    import numpy as np

    if array.shape[2] == width:
        return array
    padding = np.zeros((*array.shape[:2], width - array.shape[2], array.shape[3]), dtype=array.dtype)
    return np.concatenate([array, padding], axis=2)
