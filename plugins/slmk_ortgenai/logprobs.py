"""Token log-probabilities from a build's logits: what serve's ``logprobs`` and ``echo`` need.

onnxruntime-genai gives logits, not probabilities: the log-softmax is done here, in
float64 numpy, over the model's own distribution (before temperature, top_p, top_k and
repetition penalty reshape it for sampling, as OpenAI and vLLM report them).

An entry is ``{"id", "token", "bytes", "logprob", "top": [(id, token, bytes, logprob), ...]}``;
``token`` is the token decoded alone (a token that is part of a UTF-8 character decodes
to U+FFFD), ``bytes`` its UTF-8 bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

#: The most alternatives a request may ask for per token (OpenAI's limit for top_logprobs).
MAX_TOP_LOGPROBS = 20


def log_softmax(rows: Any) -> Any:
    """Log-probabilities of each row of logits, computed in float64."""
    import numpy as np

    rows = np.asarray(rows, dtype=np.float64)
    rows = rows.reshape(-1, rows.shape[-1])
    peak = rows.max(axis=-1, keepdims=True)
    return rows - (np.log(np.exp(rows - peak).sum(axis=-1, keepdims=True)) + peak)


def entry(row: Any, token: int, top: int, decode: Callable[[Sequence[int]], str]) -> dict[str, Any]:
    """The entry of ``token`` in one row of log-probabilities, with the ``top`` most likely tokens."""
    import numpy as np

    def described(token_id: int) -> tuple[int, str, list[int], float]:
        text = decode([token_id])
        return token_id, text, _utf8(text), float(row[token_id])

    alternatives = []
    if top:
        best = np.argpartition(-row, top - 1)[:top] if top < len(row) else np.arange(len(row))
        best = best[np.argsort(-row[best], kind="stable")]
        alternatives = [described(int(t)) for t in best]
    token_id, text, raw, logprob = described(int(token))
    return {"id": token_id, "token": text, "bytes": raw, "logprob": logprob, "top": alternatives}


def prompt_entries(session: Any, ids: Sequence[int], top: int) -> list[dict[str, Any]]:
    """Teacher-forced entries of every prompt token; the first has no history (its logprob is None).

    Fed in ``session.score_chunk`` tokens a call, as ``score`` does: a build with a pruned
    output layer (int4/int8 ``prune_lm_head``) gives the last position's logits only, so
    it is fed one token a call.
    """
    if not ids:
        return []
    og, model = session._og, session._model
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=max(len(ids), session.min_cache_length))
    generator = og.Generator(model, params)
    chunk = session.score_chunk
    text = session._token_text([int(ids[0])])
    first = {"id": int(ids[0]), "token": text, "bytes": _utf8(text), "logprob": None, "top": []}
    entries: list[dict[str, Any]] = [first]
    try:
        for start in range(0, len(ids) - 1, chunk):
            end = min(start + chunk, len(ids) - 1)  # the last token predicts nothing in the prompt
            generator.append_tokens(list(ids[start:end]))
            rows = log_softmax(generator.get_output("logits")[0][-(end - start) :])
            entries.extend(entry(rows[r], ids[start + r + 1], top, session._token_text) for r in range(end - start))
    finally:
        del generator
    return entries


def _utf8(text: str) -> list[int]:
    return list(text.encode("utf-8", "surrogatepass"))
