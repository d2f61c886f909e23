"""The ONNX Runtime GenAI runtime: load a build in-process, chat, encode and score."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from slmk.api import ExecutionProvider, GenerationStats, LoadRequest, SlmkError, UsageError
from slmk.api.models import SEARCH_OPTIONS, build_problems, check_messages, read_genai_config

from . import adapters as lora
from . import logprobs as token_logprobs
from .errors import first_line
from .providers import genai_provider
from .tokenization import exact_encoder

#: With truncate=True and no max_new_tokens, room left for the answer (at most half the context).
TRUNCATE_RESERVE = 256
#: Tokens fed per model call when scoring: bounds the logits held in memory (chunk x vocab).
SCORE_CHUNK = 128
#: Prompt tokens fed per model call when generating. The builder's graphs compute logits for
#: every input position, so one call on a 512-token prompt of a 151936-word model holds a
#: 512 x 151936 fp32 logits tensor (297 MiB); in calls of 128 the peak RSS of a 0.5B int4
#: build at a 512-token prompt fell from 946 to 661 MiB (benchmarks/peer_llamacpp.py).
PREFILL_CHUNK = 128
#: onnxruntime-genai takes random_seed and top_k as 32-bit integers (larger ones fail to convert).
INT32 = (-(2**31), 2**31 - 1)
#: What ``generate(..., guidance=(KIND, SPEC))`` constrains the answer with: onnxruntime-genai's
#: llguidance kinds (a JSON schema, a regular expression, a Lark grammar).
GUIDANCE_KINDS = ("json_schema", "regex", "lark_grammar")


def can_load(path: Path) -> str | None:
    """Why this folder cannot be loaded by onnxruntime-genai, or None."""
    problems = build_problems(Path(path))
    return "; ".join(problems) if problems else None


def load(request: LoadRequest) -> OrtGenAISession:
    reason = can_load(request.path)
    if reason:
        raise UsageError(f"cannot load {request.path}: {reason}", hint="pass the output folder of `slmk convert`")
    options = dict(request.options)
    max_batch = options.pop("max_batch", None)
    if max_batch is not None:
        # continuous batching (slmk serve): one copy of the weights for every sequence
        from .batching import BatchingSession, batching_problem

        ep = request.execution_provider
        problem = (
            batching_problem(request.path)
            or ("it loads an adapter" if options.get("adapter") else None)
            or (f"batching runs on the CPU, not {ep.name}" if genai_provider(ep) else None)
        )
        if problem is None:
            return BatchingSession(request.path, request.execution_provider, max_batch, options)
        session = OrtGenAISession(request.path, request.execution_provider, options)
        session.not_batched = problem  # the caller says why: one answer at a time
        return session
    return OrtGenAISession(request.path, request.execution_provider, options)


class OrtGenAISession:
    """A loaded build. ``generate`` streams text; ``encode`` and ``score`` serve benchmarks."""

    guidance_kinds = GUIDANCE_KINDS  # what generate(guidance=...) takes (slmk serve asks)
    takes_tools = True  # generate(tools=[...]) renders them through the model's chat template

    #: what this session's options are called in messages, and which it takes
    runtime_label = "ortgenai"
    option_names = ("truncate", "adapter")

    def __init__(self, path: Path, execution_provider: ExecutionProvider, options: Mapping[str, Any] | None = None):
        options = self._read_build(path, execution_provider, options)
        self._load()
        self._ready()
        if options.get("adapter"):
            self.adapter = self.load_adapter(options["adapter"])

    def _read_build(
        self, path: Path, execution_provider: ExecutionProvider, options: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """What every session reads from a build before loading it (shared with the batched
        session); returns the options taken, unknown ones refused."""
        self.path = Path(path)
        self.execution_provider = execution_provider
        self.last_stats: GenerationStats | None = None
        self.last_token_ids: list[int] = []  # the tokens the last generate() produced, eos included
        self._logprobs: list[dict[str, Any]] = []  # entries of tokens generated since take_logprobs()
        options = dict(options or {})
        unknown = sorted(set(options) - set(self.option_names))
        if unknown:
            raise UsageError(
                f"unknown runtime option(s) {', '.join(unknown)} for {self.runtime_label}",
                hint=f"{self.runtime_label} takes {' and '.join(self.option_names)}",
            )
        self.truncate = bool(options.get("truncate", False))
        self._adapters = None  # og.Adapters, made on the first adapter load
        self._adapter_names: dict[str, str] = {}  # adapter file -> the name og knows it by
        self.adapter: str | None = None  # the adapter generate() uses when none is given
        precision = _build_precision(self.path)
        if precision and precision not in execution_provider.run_precisions:
            # onnxruntime loads e.g. an fp16 build on CPU and then fails at the first token.
            raise SlmkError(
                f"{self.path} is a {precision} build, which does not run on {execution_provider.name}",
                hint=self._load_hint(),
            )
        self._config = read_genai_config(self.path)
        model = self._config.get("model") or {}
        self.context_length: int = int(model.get("context_length") or 0)
        self.default_search: dict[str, Any] = dict(self._config.get("search") or {})
        self.vocab_size: int = int(model.get("vocab_size") or 0)
        self.min_cache_length = _min_cache_length(self._config)
        self._score_chunk: int | None = None  # known at the first score(): see score_chunk
        return options

    def _load(self) -> None:
        """Load the model and tokenizer with onnxruntime-genai."""
        import onnxruntime_genai as og

        self._og = og
        execution_provider = self.execution_provider
        try:
            provider = genai_provider(execution_provider)
            og_config = og.Config(str(self.path))
            og_config.clear_providers()
            if provider:
                og_config.append_provider(provider)
            self._model = og.Model(og_config)
            self._tokenizer = og.Tokenizer(self._model)
        except Exception as exc:
            raise SlmkError(
                f"onnxruntime-genai cannot load {self.path} on {execution_provider.name}: {first_line(exc)}",
                hint=self._load_hint(),
            ) from exc

    def _ready(self) -> None:
        """After loading: the end tokens and the prompt encoder."""
        self.eos_token_ids = frozenset(int(t) for t in self._tokenizer.eos_token_ids)
        # transformers' prompt tokens (onnxruntime-genai's own differ for SentencePiece tokenizers)
        self._exact_encode = exact_encoder(self.path)

    # ------------------------------------------------------------ adapters
    def available_adapters(self) -> list[str]:
        """The adapter files of this build (``adapters/NAME.onnx_adapter``), by NAME."""
        folder = self.path / lora.ADAPTERS_DIR
        return sorted(p.name[: -len(lora.ONNX_ADAPTER_SUFFIX)] for p in folder.glob(f"*{lora.ONNX_ADAPTER_SUFFIX}"))

    def load_adapter(self, name_or_file: str | Path) -> str:
        """Load an adapter (a NAME of this build's adapters/ or an .onnx_adapter file) once; returns its name.

        The model stays loaded once: each request picks its adapter, or none (the base).
        """
        self._require_open()
        if not lora.lora_inputs(self.path):
            raise UsageError(
                f"{self.path} was not built for separate adapters",
                hint="build it with `slmk convert ADAPTER_DIR --adapter-mode separate`, "
                "or run a merged build without --adapter",
            )
        text = str(name_or_file)
        candidate = Path(text).expanduser()
        if text.endswith(lora.ONNX_ADAPTER_SUFFIX) or candidate.is_file():
            file = candidate
            if not file.is_file():
                raise UsageError(f"adapter file {file} does not exist", hint="pass an .onnx_adapter file or a NAME")
        else:
            file = self.path / lora.ADAPTERS_DIR / f"{text}{lora.ONNX_ADAPTER_SUFFIX}"
            if not file.is_file():
                names = self.available_adapters()
                raise UsageError(
                    f"{self.path} has no adapter {text!r}",
                    hint=f"its adapters: {', '.join(names) or 'none'}; or pass an .onnx_adapter file",
                )
        key = str(file.resolve())
        if key in self._adapter_names:
            return self._adapter_names[key]
        name = (
            file.name[: -len(lora.ONNX_ADAPTER_SUFFIX)] if file.name.endswith(lora.ONNX_ADAPTER_SUFFIX) else file.stem
        )
        if name in self._adapter_names.values():  # two files with one name: keep both apart
            name = key
        try:
            if self._adapters is None:
                self._adapters = self._og.Adapters(self._model)
            self._adapters.load(key, name)
        except Exception as exc:
            raise SlmkError(
                f"onnxruntime-genai cannot load the adapter {file}: {first_line(exc)}",
                hint="an adapter file fits the separate-mode build of its own base and target modules",
            ) from exc
        self._adapter_names[key] = name
        return name

    def _load_hint(self) -> str:
        precision = _build_precision(self.path)
        ep = self.execution_provider
        if precision and precision not in ep.run_precisions:
            return (
                f"this is a {precision} build and {ep.name} runs {', '.join(ep.run_precisions)}: "
                f"rebuild with `slmk convert MODEL -p {ep.run_precisions[0]} -e {ep.name}`"
            )
        return (
            f"`slmk doctor` checks the {ep.name} execution provider; "
            "rebuild with `slmk convert --force` if the files are damaged"
        )

    # ------------------------------------------------------------ text
    def _require_open(self) -> None:
        if self._model is None:
            raise SlmkError("this session is closed", hint="load the model again")

    def encode(self, text: str) -> list[int]:
        self._require_open()
        if self._exact_encode is not None:
            return self._exact_encode(text)
        return [int(t) for t in self._tokenizer.encode(text)]

    def decode(self, token_ids: Sequence[int]) -> str:
        self._require_open()
        return self._tokenizer.decode(list(token_ids))

    def render_prompt(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping] | None = None) -> str:
        """The prompt text the model's own chat template makes of ``messages`` (and ``tools``,
        OpenAI function tools, which the template describes to the model)."""
        self._require_open()
        check_messages(messages)
        try:
            return self._tokenizer.apply_chat_template(
                json.dumps(list(map(dict, messages))),
                tools=json.dumps(list(tools)) if tools else None,
                add_generation_prompt=True,
            )
        except Exception as exc:
            raise SlmkError(
                f"the chat template of {self.path} failed: {first_line(exc)}",
                hint="check chat_template in tokenizer_config.json or chat_template.jinja",
            ) from exc

    # ------------------------------------------------------------ generate
    def generate(self, messages: list[Mapping[str, str]], **search: Any) -> Iterator[str]:
        """Stream the answer to ``messages``; bad options or an overlong prompt raise here, not mid-stream.

        ``adapter=NAME`` (or a file) answers with that LoRA adapter, ``adapter=None`` with
        the base; without it, the session's default adapter (``adapter`` load option) is used.
        ``guidance=(KIND, SPEC)`` constrains the answer (``GUIDANCE_KINDS``); ``tools`` are
        OpenAI function tools for the chat template.
        """
        adapter = search.pop("adapter", self.adapter)
        top_logprobs = search.pop("logprobs", None)
        _check_top_logprobs(top_logprobs)
        guidance, tools = search.pop("guidance", None), search.pop("tools", None)
        unknown = sorted(set(search) - set(SEARCH_OPTIONS))
        if unknown:
            raise UsageError(
                f"unknown search option(s) {', '.join(unknown)}", hint=f"use {', '.join(SEARCH_OPTIONS)} or adapter"
            )
        check_search_values(search)
        adapter_name = self.load_adapter(adapter) if adapter else None
        if guidance is not None:
            self._check_guidance(guidance)
        prompt_ids = self.encode(self.render_prompt(messages, tools))
        return self._stream(
            *self._plan(prompt_ids, search), adapter=adapter_name, top_logprobs=top_logprobs, guidance=guidance
        )

    def _check_guidance(self, guidance: Any) -> None:
        """Refuse a constraint onnxruntime-genai cannot compile now, not at the first token."""
        kind, spec = guidance if isinstance(guidance, tuple) and len(guidance) == 2 else (None, None)
        if kind not in GUIDANCE_KINDS or not isinstance(spec, str):
            raise UsageError(
                f"guidance must be (KIND, SPEC) with KIND one of {', '.join(GUIDANCE_KINDS)}, not {guidance!r}"
            )
        params = self._og.GeneratorParams(self._model)
        params.set_search_options(max_length=max(2, self.min_cache_length))
        try:
            params.set_guidance(kind, spec)
            generator = self._og.Generator(self._model, params)  # the grammar compiles here
            del generator
        except Exception as exc:
            raise UsageError(
                f"onnxruntime-genai cannot use this {kind} constraint: {first_line(exc)}",
                hint="llguidance takes JSON Schema (draft 2020-12 subset), Rust-style regex and its Lark dialect",
            ) from exc

    def generate_ids(self, prompt_ids: Sequence[int], **search: Any) -> Iterator[str]:
        """Stream the answer to a prompt given as token ids: no chat template, no tokenizer on the
        way in (parity checks feed another tokenizer's ids; ``last_token_ids`` holds the answer).

        ``logprobs=K`` (0 to 20) records each generated token's log-probability and its K
        likeliest alternatives (``take_logprobs``); generate() takes it too."""
        top_logprobs = search.pop("logprobs", None)
        _check_top_logprobs(top_logprobs)
        guidance = search.pop("guidance", None)
        unknown = sorted(set(search) - set(SEARCH_OPTIONS))
        if unknown:
            raise UsageError(f"unknown search option(s) {', '.join(unknown)}", hint=f"use {', '.join(SEARCH_OPTIONS)}")
        check_search_values(search)
        self._require_open()
        if guidance is not None:
            self._check_guidance(guidance)
        return self._stream(
            *self._plan([int(t) for t in prompt_ids], search), top_logprobs=top_logprobs, guidance=guidance
        )

    def _plan(self, prompt_ids: list[int], search: dict[str, Any]) -> tuple[list[int], dict[str, Any], int]:
        search = {k: v for k, v in search.items() if v is not None}
        if self.vocab_size and search.get("top_k", 0) > self.vocab_size:
            # onnxruntime-genai would refuse it only when the generator is made, mid-stream
            raise UsageError(
                f"top_k {search['top_k']} is more than the model's vocabulary ({self.vocab_size} tokens)",
                hint=f"top_k must be at most {self.vocab_size} (0: no limit)",
            )
        truncate = bool(search.pop("truncate", self.truncate))
        new_tokens = search.pop("max_new_tokens", None)
        context = self.context_length or len(prompt_ids) + int(new_tokens or TRUNCATE_RESERVE)
        if len(prompt_ids) >= context:
            if not truncate:
                raise SlmkError(
                    f"the prompt has {len(prompt_ids)} tokens and the model's context holds {context}",
                    hint="shorten the conversation, or pass truncate=True to drop its oldest tokens",
                )
            reserve = min(int(new_tokens or TRUNCATE_RESERVE), context // 2)
            prompt_ids = prompt_ids[len(prompt_ids) - (context - reserve) :]
        if new_tokens is not None:
            if int(new_tokens) < 1:
                raise UsageError(f"max_new_tokens must be at least 1, not {new_tokens}")
            search["max_length"] = min(len(prompt_ids) + int(new_tokens), context)
        max_length = int(search.get("max_length") or self.default_search.get("max_length") or context)
        if max_length <= len(prompt_ids):
            raise UsageError(
                f"max_length {max_length} leaves no room to answer a prompt of {len(prompt_ids)} tokens",
                hint="raise max_length or use max_new_tokens",
            )
        search["max_length"] = min(max_length, context)
        new_token_limit = search["max_length"] - len(prompt_ids)
        # The KV cache holds max_length tokens, and a sliding-window layer refuses a cache
        # shorter than its window ("KV cache capacity (N) must be at least local_window_size"):
        # ask for the window and stop at the requested length here.
        search["max_length"] = max(search["max_length"], self.min_cache_length)
        if search.get("temperature") == 0:  # the usual spelling of greedy decoding
            search.pop("temperature")
            search["do_sample"] = False
        return prompt_ids, search, new_token_limit

    def _stream(
        self,
        prompt_ids: list[int],
        search: dict[str, Any],
        new_token_limit: int,
        adapter: str | None = None,
        top_logprobs: int | None = None,
        guidance: tuple[str, str] | None = None,
    ) -> Iterator[str]:
        og = self._og
        self._logprobs = []
        start = time.perf_counter()
        first_token_at = None
        produced: list[int] = []
        self.last_stats = None
        self.last_token_ids = produced
        try:
            params = og.GeneratorParams(self._model)
            params.set_search_options(**search)
            if guidance:
                params.set_guidance(*guidance)
            generator = og.Generator(self._model, params)
            if adapter:
                generator.set_active_adapter(self._adapters, adapter)
            for begin in range(0, len(prompt_ids), PREFILL_CHUNK):
                generator.append_tokens(prompt_ids[begin : begin + PREFILL_CHUNK])
            stream = self._tokenizer.create_stream()
            while not generator.is_done() and len(produced) < new_token_limit:
                # the logits the next token is drawn from (after generate_next_token they are the following one's)
                row = token_logprobs.log_softmax(generator.get_logits())[-1] if top_logprobs is not None else None
                generator.generate_next_token()
                token = int(generator.get_next_tokens()[0])
                if first_token_at is None:
                    first_token_at = time.perf_counter()
                produced.append(token)
                if row is not None:  # the end token too (as vLLM lists it): echo scoring counts on it
                    self._logprobs.append(token_logprobs.entry(row, token, top_logprobs, self._token_text))
                if token in self.eos_token_ids:
                    continue  # the end-of-turn marker is not part of the answer
                piece = stream.decode(token)
                if piece:
                    yield piece
        except (SlmkError, GeneratorExit):
            raise
        except Exception as exc:
            raise SlmkError(f"generation failed: {first_line(exc)}", hint=self._load_hint()) from exc
        finally:
            end = time.perf_counter()
            self.last_stats = GenerationStats(
                prompt_tokens=len(prompt_ids),
                generated_tokens=len(produced),
                time_to_first_token_s=(first_token_at or end) - start,
                total_s=end - start,
            )

    def _token_text(self, token_ids: Sequence[int]) -> str:
        # onnxruntime-genai decodes an end token alone to U+FFFD: it has no text in the answer
        return "" if len(token_ids) == 1 and token_ids[0] in self.eos_token_ids else self.decode(token_ids)

    def take_logprobs(self) -> list[dict[str, Any]]:
        """Entries of the tokens generated since the last call (``logprobs=K``); see logprobs.py."""
        taken, self._logprobs = self._logprobs, []
        return taken

    def prompt_logprobs(self, prompt_ids: Sequence[int], top: int = 0) -> list[dict[str, Any]]:
        """Teacher-forced entries of each prompt token (the first has no logprob), as echo reports them."""
        self._require_open()
        _check_top_logprobs(top)
        ids = [int(t) for t in prompt_ids]
        if self.context_length and len(ids) > self.context_length:
            raise SlmkError(
                f"the prompt has {len(ids)} tokens and the model's context holds {self.context_length}",
                hint="shorten the prompt",
            )
        start = time.perf_counter()
        entries = token_logprobs.prompt_entries(self, ids, top)
        total = time.perf_counter() - start
        self.last_token_ids = []
        self.last_stats = GenerationStats(
            prompt_tokens=len(ids), generated_tokens=0, time_to_first_token_s=total, total_s=total
        )
        return entries

    # ------------------------------------------------------------ score
    def score(self, text: str, *, window: int | None = None, stride: int | None = None) -> tuple[float, int]:
        """Teacher-forced negative log-likelihood of ``text``: (sum of NLL in nats, tokens scored).

        Texts longer than ``window`` (default: the context) are scored in windows that
        overlap by ``window - stride`` tokens, so every scored token sees at least that
        much history; each token is scored once.
        """
        import numpy as np

        self._require_open()
        ids = self.encode(text)
        if len(ids) < 2:
            return 0.0, 0
        window = min(window or self.context_length or len(ids), self.context_length or len(ids))
        if window < 2:
            raise UsageError(f"window must be at least 2 tokens, not {window}")
        stride = stride or max(1, window // 2)
        if not 0 < stride <= window:
            raise UsageError(f"stride must be between 1 and the window ({window}), not {stride}")
        og = self._og
        chunk = self.score_chunk
        total, count, scored_until = 0.0, 0, 1  # token 0 has no history: it is never scored
        begin = 0
        while scored_until < len(ids):
            end = min(begin + window, len(ids))
            params = og.GeneratorParams(self._model)
            params.set_search_options(max_length=max(end - begin, self.min_cache_length))
            generator = og.Generator(self._model, params)
            for chunk_start in range(begin, end, chunk):
                chunk_end = min(chunk_start + chunk, end)
                generator.append_tokens(ids[chunk_start:chunk_end])
                # Row r predicts token chunk_start + r + 1; score those not yet scored.
                first = max(chunk_start + 1, scored_until)
                last = min(chunk_end + 1, end)
                if first >= last:
                    continue
                logits = generator.get_output("logits")[0]  # fp16 builds give fp16 logits
                rows = np.asarray(logits[first - 1 - chunk_start : last - 1 - chunk_start], dtype=np.float64)
                peak = rows.max(axis=-1, keepdims=True)
                log_norm = np.log(np.exp(rows - peak).sum(axis=-1)) + peak[:, 0]
                targets = np.asarray(ids[first:last])
                total += float((log_norm - rows[np.arange(len(targets)), targets]).sum())
                count += len(targets)
                scored_until = last
            del generator
            if end == len(ids):
                break
            begin += stride
        return total, count

    def logits(self, token_ids: Sequence[int], start: int = 0):
        """Teacher-forced logits (float32 numpy, one row per position from ``start``) of ``token_ids``:
        row r predicts the token after position ``start + r`` (what `slmk convert` checks against the source)."""
        import numpy as np

        self._require_open()
        ids = [int(t) for t in token_ids]
        if not 0 <= start < len(ids):
            raise UsageError(f"start {start} is outside the {len(ids)} ids given")
        params = self._og.GeneratorParams(self._model)
        params.set_search_options(max_length=max(len(ids), self.min_cache_length))
        generator = self._og.Generator(self._model, params)
        for begin in range(0, start, PREFILL_CHUNK):  # the rows before start are not wanted: feed them fast
            generator.append_tokens(ids[begin : min(begin + PREFILL_CHUNK, start)])
        chunk, rows = self.score_chunk, []  # a build with a pruned output layer gives one row per call
        for begin in range(start, len(ids), chunk):
            end = min(begin + chunk, len(ids))
            generator.append_tokens(ids[begin:end])
            rows.append(np.asarray(generator.get_output("logits")[0][: end - begin], dtype=np.float32))
        del generator
        return np.concatenate(rows, axis=0)

    @property
    def score_chunk(self) -> int:
        """Tokens per scoring call: SCORE_CHUNK, or 1 for a build whose graph gives the last row of logits only.

        Asked of the model itself (two tokens in, how many rows out), so a pruned output
        layer (``prune_lm_head``) is never misread as every position's logits.
        """
        if self._score_chunk is None:
            params = self._og.GeneratorParams(self._model)
            params.set_search_options(max_length=max(2, self.min_cache_length))
            generator = self._og.Generator(self._model, params)
            generator.append_tokens([0, 0])
            rows = generator.get_output("logits").shape[-2]
            del generator
            self._score_chunk = SCORE_CHUNK if rows == 2 else 1
        return self._score_chunk

    def perplexity(self, text: str, **kwargs: Any) -> float:
        nll, count = self.score(text, **kwargs)
        return math.exp(nll / count) if count else float("nan")

    # ------------------------------------------------------------ lifetime
    def close(self) -> None:
        self._adapters = None
        self._adapter_names.clear()
        self._tokenizer = None
        self._model = None

    def __enter__(self) -> OrtGenAISession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _min_cache_length(config: Mapping[str, Any]) -> int:
    """The shortest KV cache the build's sliding-window layers accept (0: any).

    onnxruntime's GroupQueryAttention refuses a cache (``max_length``) shorter than a sliding
    layer's window ("KV cache capacity (N) must be at least local_window_size"). Only layers
    in ``sliding_window.layers`` slide: Phi-3 builds carry a window (2047; 262144 for
    Phi-3.5) with an empty list and must not get a cache that long. A build without the
    list (older builders) slides every layer.
    """
    model = config.get("model") or {}
    window = (model.get("decoder") or {}).get("sliding_window") or {}
    if not isinstance(window, dict) or ("layers" in window and not window["layers"]):
        return 0
    size = int(window.get("window_size") or 0)
    context = int(model.get("context_length") or 0)
    return min(size, context) if context else size


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    # nan passes no comparison and inf is no temperature: finite numbers only
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


#: What each search option takes: the checks slmk.toml and the command line apply, for
#: callers of the Python API too (onnxruntime-genai itself takes a temperature of -1 or nan).
_SEARCH_VALUES: dict[str, tuple[Any, str]] = {
    "max_length": (lambda v: _is_int(v) and v > 0, "an integer > 0"),
    "max_new_tokens": (lambda v: _is_int(v) and v > 0, "an integer > 0"),
    "min_length": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "random_seed": (lambda v: _is_int(v) and INT32[0] <= v <= INT32[1], "an integer from -2**31 to 2**31-1"),
    "do_sample": (lambda v: isinstance(v, bool), "true or false"),
    "truncate": (lambda v: isinstance(v, bool), "true or false"),
    "temperature": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "top_p": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "top_k": (lambda v: _is_int(v) and 0 <= v <= INT32[1], "an integer from 0 to 2**31-1"),
    "repetition_penalty": (lambda v: _is_number(v) and v > 0, "a number > 0"),
}


def _check_top_logprobs(top: int | None) -> None:
    if top is not None and not (_is_int(top) and 0 <= top <= token_logprobs.MAX_TOP_LOGPROBS):
        raise UsageError(f"logprobs = {top!r} is not allowed", hint="logprobs must be an integer from 0 to 20")


def check_search_values(search: Mapping[str, Any]) -> None:
    """A UsageError for the first search option whose value is out of range (None: unset)."""
    for key, value in search.items():
        check, allowed = _SEARCH_VALUES.get(key, (None, ""))
        if value is not None and check is not None and not check(value):
            raise UsageError(f"search option {key} = {value!r} is not allowed", hint=f"{key} must be {allowed}")


def _build_precision(folder: Path) -> str | None:
    try:
        return json.loads((folder / "slmk_build.json").read_text(encoding="utf-8")).get("precision")
    except (OSError, ValueError, AttributeError):
        return None
