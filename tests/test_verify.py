"""Every build checked against its source: the tiny model run by transformers is the truth.

Real conversions with the real model builder, the real source run by transformers, the real
builds run by onnxruntime-genai. The mismatch is real too: a Qwen2 model with
``partial_rotary_factor`` 0.5, which transformers applies and the 0.18 builder ignores.
"""

from __future__ import annotations

import json
import shutil

import pytest

from slmk import app
from slmk.api.operations import verification_summary
from slmk.cli.build import inspect_model
from slmk.errors import SlmkError
from slmk.plugins import get_registry


def verification(build) -> dict:
    return json.loads((build / "slmk_build.json").read_text())["verification"]


def test_the_fp32_build_gives_transformers_greedy_tokens(tiny_build):
    found = verification(tiny_build("fp32"))
    assert found["status"] == "verified" and found["tokens_equal"] is True
    assert found["prompts"] == 3 and found["positions"] >= 3 and found["token_agreement"] == 1.0
    assert 0 <= found["max_logit_diff"] < 1e-3  # fp32 against fp32: rounding only
    assert found["logit_cosine"] > 0.99999 and found["prompt_tokens_equal"] == "3/3"
    assert found["against"].startswith("transformers ") and "float32" in found["against"]


def test_the_int4_build_records_agreement_and_cosine(tiny_build):
    found = verification(tiny_build("int4"))
    assert found["status"] == "measured" and found["positions"] >= 3
    assert 0.5 <= found["token_agreement"] <= 1 and 0.9 < found["logit_cosine"] <= 1
    assert found["max_logit_diff"] > 1e-3  # quantized: the logits move, unlike fp32's


@pytest.fixture(scope="module")
def misbuilt_model(tmp_path_factory, tiny_model_dir):
    """The tiny model with half its head dimensions rotated: transformers honours
    partial_rotary_factor, the builder rotates every dimension, so greedy tokens differ."""
    folder = tmp_path_factory.mktemp("partial-rotary") / "model"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["partial_rotary_factor"] = 0.5
    config["rope_parameters"]["partial_rotary_factor"] = 0.5
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


@pytest.mark.slow
def test_a_build_that_differs_is_refused_and_nothing_is_kept(misbuilt_model, tmp_path):
    output = tmp_path / "out" / "fp32"
    with pytest.raises(SlmkError) as refused:
        app.convert(misbuilt_model, output, precision="fp32")
    line = refused.value.one_line()
    assert "\n" not in line
    assert line.startswith("the fp32 build differs from the source model: prompt ")
    assert ", generated token " in line and "transformers gives " in line and "the build " in line
    assert "--no-verify" in line
    assert not output.exists() and list(output.parent.iterdir()) == []  # no half-written folder either

    # the verdict is cached with the build's steps: a rerun refuses again without running anything
    with pytest.raises(SlmkError, match="differs from the source model"):
        app.convert(misbuilt_model, output, precision="fp32")
    assert not output.exists()

    # --no-verify keeps it, and says so in the build
    app.convert(misbuilt_model, output, precision="fp32", verify=False)
    assert verification(output) == {"status": "skipped", "reason": "--no-verify: not compared with the source model"}


@pytest.mark.slow
def test_int4_of_a_differing_model_is_kept_with_its_figures(misbuilt_model, tmp_path):
    output = tmp_path / "int4"
    app.convert(misbuilt_model, output, precision="int4")
    found = verification(output)
    assert found["status"] == "measured" and found["tokens_equal"] is False
    assert found["token_agreement"] < 1 and "transformers gives" in found["first_difference"]


@pytest.mark.slow
def test_not_verified_when_transformers_cannot_load_the_source(tiny_model_dir, tmp_path):
    """Weights only as a pickle: the builder reads them when allowed, transformers (safetensors
    only, pickles can run code) does not: the build says why it was not verified."""
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    result = app.convert(folder, tmp_path / "out", precision="fp32", plugin_settings={"ortgenai.allow_pickle": True})
    found = verification(result.output)
    assert found["status"] == "not verified"
    assert found["reason"].startswith("transformers cannot load it: its weights are pickles")
    assert inspect_model(result.output)["verification"] == found


def test_not_verified_without_a_runtime_for_sources(tiny_model_dir, tiny_build):
    """Without the transformers plugin, the check says so (never skipped silently)."""
    from slmk.plugins import make_registry
    from slmk.records import ConvertRequest

    registry = make_registry("system", "ortgenai", "families", "verify")
    assert "transformers" not in registry.runtimes
    info = app.ModelInfo.load(tiny_model_dir)
    request = ConvertRequest(tiny_model_dir, precision="fp32", cache_dir=tiny_build("fp32").parent)
    check = registry.build_checks["source"].start(request, info, registry)
    check.before("key")
    assert check.after(tiny_build("fp32"))["reason"] == (
        "no runtime plugin loads Hugging Face folders (is the transformers plugin disabled?)"
    )


def test_not_verified_without_a_build_check(tiny_model_dir, tiny_build, tmp_path):
    """Without the verify plugin, the build records that no check is installed (never silently)."""
    from slmk.plugins import make_registry

    registry = make_registry("system", "ortgenai", "families", "transformers", "build")
    assert registry.build_checks == {}
    output = tmp_path / "fp32"
    app.convert(tiny_model_dir, output, precision="fp32", registry=registry)
    assert verification(output) == {
        "status": "not verified",
        "reason": "no build check installed (is the verify plugin disabled?)",
    }
    assert verification_summary(verification(output)).startswith("not verified: no build check installed")


@pytest.mark.parametrize(
    ("after", "said"),
    [
        (lambda folder: 1 / 0, "build check 'broken' on the build: ZeroDivisionError: division by zero"),
        (lambda folder: None, "build check 'broken' returned NoneType, not a verdict with a status"),
    ],
    ids=["raises", "no-verdict"],
)
def test_a_broken_build_check_is_one_line_naming_its_plugin_and_nothing_is_kept(tiny_model_dir, tmp_path, after, said):
    from slmk.api import BuildCheck, hookimpl
    from slmk.errors import PluginError
    from slmk.plugins import make_registry

    class Broken:
        def __init__(self, request, info, registry):
            self.after = after

        def before(self, final_key):
            pass

    class BrokenCheckPlugin:
        @hookimpl
        def slmk_build_checks(self):
            yield BuildCheck(name="broken", description="a check with a bug", start=Broken, priority=5)

    registry = make_registry("system", "ortgenai", "families", "transformers", "verify", "build", BrokenCheckPlugin())
    assert registry.default_name("slmk_build_checks") == "broken"  # the highest priority runs
    output = tmp_path / "fp32"
    with pytest.raises(PluginError) as failed:
        app.convert(tiny_model_dir, output, precision="fp32", registry=registry)
    line = failed.value.one_line()
    assert line.startswith("plugin 'BrokenCheckPlugin' ") and said in line and "\n" not in line
    assert not output.exists()


def test_a_check_that_words_its_own_verdict_is_shown_as_it_says():
    assert verification_summary({"status": "verified", "summary": "the tokenizer is kept"}) == (
        "verified: the tokenizer is kept"
    )


def test_inspect_shows_the_check(tiny_build, run_slmk):
    result = run_slmk("inspect", str(tiny_build("fp32")))
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("source check:"))
    assert "verified: greedy tokens equal to transformers' on 3 prompts" in line


@pytest.mark.slow
def test_list_shows_the_check_of_each_install(tiny_build, run_slmk, tmp_path):
    cache = tmp_path / "foundry"
    app.install(tiny_build("int4"), "tiny-int4", cache_dir=cache, registry=get_registry())
    listed = run_slmk("list", "--cache-dir", str(cache), "--json")
    assert listed.returncode == 0, listed.stderr
    (model,) = json.loads(listed.stdout)
    assert model["verification"]["status"] == "measured" and 0 < model["verification"]["logit_cosine"] <= 1
    text = run_slmk("list", "--cache-dir", str(cache)).stdout
    assert "source check: measured against transformers: token agreement " in text


def test_the_source_runtime_agrees_with_the_fp32_build(tiny_model_dir, tiny_build):
    """The transformers session: same prompt ids, same greedy answer, same perplexity as the fp32 build."""
    source = app.open_source_session(tiny_model_dir)
    build = app.open_session(tiny_build("fp32"))
    try:
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        prompt = source.render_prompt(messages)
        assert source.encode(prompt) == build.encode(prompt)
        source_answer = "".join(source.generate(messages, max_new_tokens=12, do_sample=False))
        build_answer = "".join(build.generate(messages, max_new_tokens=12, do_sample=False))
        assert source_answer == build_answer and source.last_stats.generated_tokens > 0
        text = "The morning was cool and the market opened early. Traders set out baskets of bread."
        assert source.perplexity(text) == pytest.approx(build.perplexity(text), rel=1e-3)
    finally:
        source.close()
        build.close()
    with pytest.raises(SlmkError, match="already an ONNX build"):
        app.open_source_session(tiny_build("fp32"))
