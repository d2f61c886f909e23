"""slmk's runtime feeds long prompts in chunks (PREFILL_CHUNK): the answer must not change."""

from __future__ import annotations

import pytest
from slmk_ortgenai import runtime
from slmk_system.providers import CPU


@pytest.mark.slow
def test_chunked_prompt_gives_the_same_greedy_answer(tiny_build):
    import onnxruntime_genai as og

    build = tiny_build("int4")
    words = ["the", "market", "opened", "early", "and", "traders", "set", "out", "bread", "fruit", "and", "fish"]
    content = " ".join(words[i % len(words)] for i in range(100))
    with runtime.OrtGenAISession(build, CPU) as session:
        prompt_ids = session.encode(session.render_prompt([{"role": "user", "content": content}]))
        assert len(prompt_ids) > 2 * runtime.PREFILL_CHUNK  # at least three calls
        new_tokens = 12
        search = {"max_new_tokens": new_tokens, "min_length": len(prompt_ids) + new_tokens, "do_sample": False}
        "".join(session.generate([{"role": "user", "content": content}], **search))
        chunked = list(session.last_token_ids)
        assert session.last_stats.prompt_tokens == len(prompt_ids)

        # the same prompt in one call, straight through onnxruntime-genai
        model = session._model
        params = og.GeneratorParams(model)
        params.set_search_options(
            max_length=len(prompt_ids) + new_tokens, min_length=len(prompt_ids) + new_tokens, do_sample=False
        )
        generator = og.Generator(model, params)
        generator.append_tokens(prompt_ids)
        whole = []
        while not generator.is_done():
            generator.generate_next_token()
            whole.append(int(generator.get_next_tokens()[0]))
    assert len(chunked) == new_tokens
    assert chunked == whole
