"""The Foundry Local runtime: chat with a model through the v2 SDK, in-process.

An installed model is registered (if an interrupted install left it unregistered)
and loaded from its cache; a plain build folder is registered in a private cache
under slmk's own cache folder, so trying a build never adds it to the user's
Foundry catalog.

Foundry builds the prompt from the tokenizer's chat template, as onnxruntime-genai
does; a conversation is sent whole on a fresh SDK ``ChatSession`` each time (the
SDK's sessions keep history, slmk's ``generate`` does not).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from slmk.api import ExecutionProvider, GenerationStats, LoadRequest, SlmkError, UsageError
from slmk.api.files import cache_root
from slmk.api.models import SEARCH_OPTIONS, build_problems, check_messages, read_genai_config

from . import sdk
from .layout import PUBLISHER, foundry_suffix, locate, read_entry, read_json

#: Request options the SDK takes per request (repetition_penalty and min_length are
#: not among them: Foundry applies the build's genai_config.json ``search`` values).
_FIXED_IN_CONFIG = ("repetition_penalty", "min_length")
#: Sampling options sent with every request: the caller's, else the build's search values.
_SAMPLING = ("do_sample", "temperature", "top_k", "top_p", "random_seed")
#: The smallest normal 32-bit float: Foundry Local reads sampling values as 32-bit floats.
_FLOAT32_TINY = 1.1754943508222875e-38


def _typed(key: str, value: Any) -> Any:
    """A build's search value of the type the SDK takes, else None (the SDK's default)."""
    if key == "do_sample":
        return value if isinstance(value, bool) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    if key in ("top_k", "random_seed"):
        return int(value) if float(value).is_integer() else None
    return float(value)


def can_load(path: Path) -> str | None:
    """Why the Foundry Local SDK cannot load this folder here, or None."""
    if not sdk.available():
        return "foundry-local-sdk is not installed (pip install 'slmk[foundry]')"
    problems = build_problems(Path(path))
    return "; ".join(problems) if problems else None


def builds_cache() -> Path:
    """The private Foundry cache where plain build folders are registered to be run."""
    return cache_root() / "foundry-local" / "builds-cache"


def _target(request: LoadRequest, folder: Path) -> tuple[Path, str, str, bool]:
    """(cache, model id, display name, refresh) for the folder to load."""
    entry = read_entry(folder)
    if entry is not None:
        # The leaf sits at <cache>/slmk/<model dir>/v<N>: its registration lives in that cache.
        in_layout = folder.parent.parent.name == PUBLISHER
        cache = folder.parents[2] if in_layout else locate(request.cache_dir)
        return cache, entry.foundry_id, entry.name, False
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:10]
    model_id = f"slmk-build-{digest}-{foundry_suffix(request.execution_provider)}:1"
    # A build folder may have been rebuilt since it was last run: register it afresh.
    return builds_cache(), model_id, folder.name, True


def load(request: LoadRequest) -> FoundrySession:
    folder = Path(request.path).expanduser().absolute()
    reason = can_load(folder)
    if reason:
        raise UsageError(
            f"cannot load {folder} with Foundry Local: {reason}",
            hint="pass an installed model name or the output folder of `slmk convert`",
        )
    ep = request.execution_provider
    precision = (read_json(folder / "slmk_build.json") or {}).get("precision")
    if precision and precision not in ep.run_precisions:
        raise SlmkError(
            f"{folder} is a {precision} build, which does not run on {ep.name}",
            hint=f"{ep.name} runs {', '.join(ep.run_precisions)}: rebuild with "
            f"`slmk convert MODEL -p {ep.run_precisions[0]} -e {ep.name}`",
        )
    cache, model_id, display_name, refresh = _target(request, folder)
    model = sdk.ensure_registered(cache, model_id, folder, display_name, refresh=refresh)
    return FoundrySession(model, model_id, folder, ep, request.options)


class FoundrySession:
    """A model loaded by the Foundry Local SDK; ``generate`` streams the answer."""

    def __init__(
        self,
        model: Any,
        model_id: str,
        folder: Path,
        execution_provider: ExecutionProvider,
        options: Mapping[str, Any] | None = None,
    ):
        self._fl = sdk._import_sdk()
        options = dict(options or {})
        self.truncate = bool(options.pop("truncate", False))
        if options:
            raise UsageError(
                f"unknown runtime option(s) {', '.join(sorted(options))} for foundry", hint="foundry takes truncate"
            )
        self.model_id = model_id
        self.path = folder
        self.execution_provider = execution_provider
        self.last_stats: GenerationStats | None = None
        config = read_genai_config(folder)
        self.context_length: int = int(config.get("model", {}).get("context_length") or 0)
        self.default_search: dict[str, Any] = dict(config.get("search") or {})
        start = time.perf_counter()
        try:
            model.load()
        except self._fl.FoundryLocalException as exc:
            raise SlmkError(
                f"Foundry Local cannot load {model_id} ({folder}): {sdk._native_message(exc)}",
                hint=f"`slmk doctor` checks the {execution_provider.name} execution provider; "
                "try `slmk run NAME --runtime ortgenai` to tell the model from the runtime",
            ) from exc
        self.load_seconds = time.perf_counter() - start
        self._model = model
        sdk.track_session(self)

    # ------------------------------------------------------------ generate
    def generate(self, messages: list[Mapping[str, str]], **search: Any) -> Iterator[str]:
        """Stream the answer to ``messages``; bad options or an overlong prompt raise here, not mid-stream."""
        if self._model is None:
            raise SlmkError("this session is closed", hint="load the model again")
        unknown = sorted(set(search) - set(SEARCH_OPTIONS))
        if unknown:
            raise UsageError(f"unknown search option(s) {', '.join(unknown)}", hint=f"use {', '.join(SEARCH_OPTIONS)}")
        check_messages(messages)
        fl = self._fl
        # tool results and calls reach a model only through slmk's own runtime (slmk serve's tools)
        for message in messages:
            if not hasattr(fl.MessageItem, message["role"]):
                raise UsageError(
                    f"the foundry runtime cannot take a {message['role']!r} message (role)",
                    hint="use the ortgenai runtime for tool calls",
                )
        session = fl.ChatSession(self._model)
        request = fl.Request()
        try:
            for message in messages:
                request.add_item(getattr(fl.MessageItem, message["role"])(message["content"]))
            prompt_tokens = session.preflight_request(request).prompt_tokens
            request.set_options(fl.RequestOptions(search=self._search_options(prompt_tokens, search)))
            session.set_streaming(True)
        except BaseException as exc:
            request._close()
            session._close()
            if isinstance(exc, fl.FoundryLocalException):
                # a refusal of this request (e.g. nothing to generate from), not a failing runtime
                raise UsageError(f"Foundry Local rejected the request: {sdk._native_message(exc)}") from exc
            raise
        return self._stream(session, request, prompt_tokens)

    def _search_options(self, prompt_tokens: int, search: dict[str, Any]):
        search = {k: v for k, v in search.items() if v is not None}
        context = self.context_length or prompt_tokens + 256
        if prompt_tokens >= context:
            raise SlmkError(
                f"the prompt has {prompt_tokens} tokens and the model's context holds {context}",
                hint="shorten the conversation (the foundry runtime does not truncate; ortgenai can)",
            )
        for key in _FIXED_IN_CONFIG:
            if key in search and search.pop(key) != self.default_search.get(key):
                raise UsageError(
                    f"the foundry runtime cannot set {key} per request",
                    hint=f"Foundry applies {key} from the build's genai_config.json search "
                    f"({self.default_search.get(key)}); use --runtime ortgenai to vary it",
                )
        search.pop("truncate", None)  # nothing to cut: an overlong prompt raised above
        new_tokens = search.pop("max_new_tokens", None)
        if new_tokens is not None and int(new_tokens) < 1:
            raise UsageError(f"max_new_tokens must be at least 1, not {new_tokens}")
        max_length = int(search.pop("max_length", None) or self.default_search.get("max_length") or context)
        # Foundry reserves 2048 new tokens unless told: more than a small model's whole context.
        room = min(max_length, context) - prompt_tokens
        if new_tokens is not None:
            room = min(room, int(new_tokens))
        if room < 1:
            raise UsageError(
                f"max_length {max_length} leaves no room to answer a prompt of {prompt_tokens} tokens",
                hint="raise max_length or use max_new_tokens",
            )
        # What the request leaves out comes from the build's genai_config.json search: the
        # SDK's own defaults would sample where the model's generation config says greedy.
        sampling = {k: _typed(k, self.default_search.get(k)) for k in _SAMPLING}
        sampling.update({k: search.pop(k) for k in _SAMPLING if k in search})
        if sampling["temperature"] == 0:  # the usual spelling of greedy decoding
            sampling["temperature"], sampling["do_sample"] = None, False
        for key in ("temperature", "top_p"):
            value = sampling[key]
            if isinstance(value, float) and 0 < value < _FLOAT32_TINY:
                # Foundry Local parses it as a 32-bit float (std::stof), which fails below this
                raise UsageError(
                    f"{key} {value:g} is too small for Foundry Local (its floats are 32-bit)",
                    hint=f"use at least {_FLOAT32_TINY:g}"
                    + (", or 0 for greedy decoding" if key == "temperature" else ""),
                )
        return self._fl.SearchOptions(
            max_output_tokens=room,
            do_sample=sampling["do_sample"],
            temperature=sampling["temperature"],
            top_k=sampling["top_k"],
            top_p=sampling["top_p"],
            seed=sampling["random_seed"],
        )

    def _stream(self, session: Any, request: Any, prompt_tokens: int) -> Iterator[str]:
        fl = self._fl
        start = time.perf_counter()
        first_token_at = None
        pieces = 0
        usage = None
        self.last_stats = None
        try:
            with session, request, session.process_streaming_request(request) as stream:
                for item in stream:
                    # Reasoning text (TextItemType.REASONING) is not part of the answer.
                    if isinstance(item, fl.TextItem) and item.type == fl.TextItemType.DEFAULT:
                        if first_token_at is None:
                            first_token_at = time.perf_counter()
                        pieces += 1
                        if item.text:
                            yield item.text
                with stream.final_response as final:
                    usage = final.get_usage()
        except fl.FoundryLocalException as exc:
            raise SlmkError(
                f"generation failed in Foundry Local: {sdk._native_message(exc)}",
                hint="try `--runtime ortgenai` on the same folder to tell the model from the runtime",
            ) from exc
        finally:
            end = time.perf_counter()
            # The SDK counts tokens exactly (its usage); an abandoned stream has none, so the
            # preflight prompt count and the streamed pieces (one per token) stand in.
            self.last_stats = GenerationStats(
                prompt_tokens=usage.prompt_tokens if usage else prompt_tokens,
                generated_tokens=usage.completion_tokens if usage else pieces,
                time_to_first_token_s=(first_token_at or end) - start,
                total_s=end - start,
            )

    # ------------------------------------------------------------ lifetime
    def close(self) -> None:
        if self._model is None:
            return
        try:
            self._model.unload()
        except Exception:  # unloading a model the SDK already dropped is not an error worth raising
            pass
        self._model = None
        sdk.untrack_session(self)

    def __enter__(self) -> FoundrySession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
