"""The ``openai-endpoint`` runtime: a ChatSession over any OpenAI-compatible HTTP endpoint.

bench and validate drive it like an in-process runtime: ``generate`` streams the
answer (``stream=True`` with ``stream_options.include_usage``) and sets
``last_stats`` from the endpoint's ``usage`` and the client-side clock.

LoadRequest.options: ``base_url`` (e.g. http://127.0.0.1:8000/v1), ``model`` (the
name the endpoint serves), ``api_key`` (optional), ``timeout`` (seconds, default 300).

What it cannot do: it has no tokenizer (no ``encode``/``score``: perplexity is not
measured; prompt lengths are found by asking with max_tokens=1), it cannot force an
answer length (``min_length``), and the process it measures for memory is the
client's, not the server's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

from slmk.api import GenerationStats, LoadRequest, SlmkError, UsageError
from slmk.api.models import SEARCH_OPTIONS, check_messages

#: Search options with an OpenAI request field.
_FIELDS = {"max_new_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p", "random_seed": "seed"}
#: Options other local servers (slmk serve, vLLM) accept as extra body fields.
_EXTRA = {"top_k": "top_k", "repetition_penalty": "repetition_penalty"}


def load(request: LoadRequest) -> EndpointSession:
    options = dict(request.options or {})
    base_url, model = options.pop("base_url", None), options.pop("model", None)
    if not base_url or not model:
        raise UsageError(
            "the openai-endpoint runtime needs a base_url and a model",
            hint="e.g. --endpoint http://127.0.0.1:8000/v1 --model NAME",
        )
    api_key = options.pop("api_key", None)
    timeout = float(options.pop("timeout", 300))
    if options:
        raise UsageError(
            f"unknown runtime option(s) {', '.join(sorted(options))} for openai-endpoint",
            hint="openai-endpoint takes base_url, model, api_key, timeout",
        )
    return EndpointSession(str(base_url), str(model), api_key, timeout)


class EndpointSession:
    """A model behind an OpenAI-compatible endpoint."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 300):
        try:
            import openai
        except ImportError:
            raise UsageError(
                "the openai-endpoint runtime needs the openai package", hint="pip install 'slmk[serve]'"
            ) from None
        self._openai = openai
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.last_stats: GenerationStats | None = None
        # The client wants a key even where the endpoint takes none.
        self._client = openai.OpenAI(
            base_url=self.base_url, api_key=api_key or "unused", timeout=timeout, max_retries=0
        )
        self.context_length = 0
        self.default_search: dict[str, Any] = {}
        try:
            card = self._client.models.retrieve(model)
        except openai.NotFoundError:
            served = self._served_names()
            raise UsageError(
                f"{self.base_url} does not serve a model {model!r}",
                hint=f"served: {', '.join(served) or 'none'}",
            ) from None
        except openai.AuthenticationError:
            raise UsageError(f"{self.base_url} refused the API key", hint="pass the endpoint's key") from None
        except openai.APIConnectionError as exc:
            raise SlmkError(f"cannot reach {self.base_url}: {exc}", hint="is the server running?") from None
        except openai.APIStatusError:
            card = None  # some servers (Ollama, older ones) have no /models/{id}: the name is tried at first use
        # slmk serve (and vLLM as max_model_len) says how long a prompt may be
        extra = getattr(card, "model_extra", None) or {}
        self.context_length = int(extra.get("context_length") or extra.get("max_model_len") or 0)

    def _served_names(self) -> list[str]:
        try:
            return sorted(m.id for m in self._client.models.list())
        except self._openai.OpenAIError:
            return []

    def generate(self, messages: list[Mapping[str, str]], **search: Any) -> Iterator[str]:
        """Stream the answer; a refused request (HTTP 4xx) raises here, before the first piece."""
        unknown = sorted(set(search) - set(SEARCH_OPTIONS))
        if unknown:
            raise UsageError(f"unknown search option(s) {', '.join(unknown)}", hint=f"use {', '.join(SEARCH_OPTIONS)}")
        check_messages(messages)
        search = {k: v for k, v in search.items() if v is not None}
        if "min_length" in search:
            raise UsageError(
                "the openai-endpoint runtime cannot set min_length",
                hint="OpenAI's API has no minimum answer length: decode rates are over the tokens the model chose",
            )
        search.pop("truncate", None)
        search.pop("max_length", None)  # a total length has no OpenAI field; max_new_tokens bounds the answer
        body: dict[str, Any] = {_FIELDS[k]: search.pop(k) for k in list(search) if k in _FIELDS}
        extra: dict[str, Any] = {_EXTRA[k]: search.pop(k) for k in list(search) if k in _EXTRA}
        if search.pop("do_sample", None) is False:
            body["temperature"] = 0  # greedy in OpenAI's terms
        started = time.perf_counter()
        self.last_stats = None
        try:
            stream = self._client.chat.completions.create(
                model=self.model,
                messages=[dict(m) for m in messages],
                stream=True,
                stream_options={"include_usage": True},
                extra_body=extra or None,
                **body,
            )
        except self._openai.BadRequestError as exc:
            raise SlmkError(f"{self.base_url} refused the request: {_message(exc)}") from None
        except self._openai.APIStatusError as exc:
            raise SlmkError(f"{self.base_url} answered {exc.status_code}: {_message(exc)}") from None
        except self._openai.APIConnectionError as exc:
            raise SlmkError(f"cannot reach {self.base_url}: {exc}", hint="is the server running?") from None
        return self._stream(stream, started)

    def _stream(self, stream: Any, started: float) -> Iterator[str]:
        first_at = None
        pieces = 0
        usage = None
        try:
            with stream:
                for chunk in stream:
                    if chunk.usage is not None:
                        usage = chunk.usage
                    for choice in chunk.choices:
                        text = choice.delta.content if choice.delta else None
                        if text:
                            if first_at is None:
                                first_at = time.perf_counter()
                            pieces += 1
                            yield text
        except self._openai.OpenAIError as exc:
            raise SlmkError(f"the stream from {self.base_url} failed: {exc}") from None
        finally:
            end = time.perf_counter()
            # An endpoint without usage in its stream: one piece per token is the best guess.
            self.last_stats = GenerationStats(
                prompt_tokens=usage.prompt_tokens if usage else 0,
                generated_tokens=usage.completion_tokens if usage else pieces,
                time_to_first_token_s=(first_at or end) - started,
                total_s=end - started,
            )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> EndpointSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping):
        error = body.get("error", body)
        if isinstance(error, Mapping) and error.get("message"):
            return str(error["message"])
    return str(exc)
