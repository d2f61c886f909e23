"""slmk_ortgenai: the real model builder (in-process) and the real onnxruntime-genai runtime."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import slmk_ortgenai
import slmk_system
from slmk_build.planner import make_plan
from slmk_ortgenai import builder, runtime
from slmk_system.providers import CPU

from slmk.api.models import read_search, search_defaults
from slmk.app import open_session
from slmk.errors import SlmkError, StepFailed, UsageError
from slmk.modelinfo import ModelInfo
from slmk.progress import Progress
from slmk.records import FORMAT_HF, ConvertRequest, LoadRequest, StepRequest
from slmk.testing import make_registry

GREEDY = {"do_sample": False, "repetition_penalty": 1.0}


@pytest.fixture(scope="module")
def registry():
    return make_registry(slmk_system, slmk_ortgenai)


def _info(architecture: str, tmp_path: Path) -> ModelInfo:
    return ModelInfo(
        path=tmp_path,
        format=FORMAT_HF,
        config={"architectures": [architecture]},
        model_type=architecture.lower(),
        architectures=(architecture,),
    )


def _step_request(source: Path, output: Path, work: Path, precision: str = "int4", **options) -> StepRequest:
    output.mkdir(parents=True, exist_ok=True)
    return StepRequest(
        source=source,
        output=output,
        precision=precision,
        execution_provider=CPU,
        options=options,
        work_dir=work,
        progress=Progress(quiet=True),
    )


# ------------------------------------------------------------------ records, no build
def test_records(registry):
    converter = registry.converters["ortgenai-builder"]
    assert converter.priority == 10 and converter.accepts_quantized_input
    assert set(converter.precisions) == {"int4", "int8", "fp16", "bf16", "fp32"}
    assert set(converter.execution_providers) == {"cpu", "cuda", "dml", "webgpu"}
    assert {"block_size", "accuracy_level", "is_symmetric", "algorithm"} <= set(converter.options)
    versions = converter.tool_versions()
    assert versions["onnxruntime-genai"] == "0.18.0" and versions["torch"] != "absent"
    assert "ortgenai" in registry.runtimes


def test_supported_architectures_come_from_the_installed_builder(tmp_path):
    parsed = builder.supported_architectures()
    assert "Qwen2ForCausalLM" in parsed and "LlamaForCausalLM" in parsed and "Phi3ForCausalLM" in parsed
    # The fallback list is the 0.18 builder's: it stays in step with the pinned version.
    assert set(parsed) == set(builder.BUILDER_ARCHITECTURES_0_18)
    assert builder.supports(_info("Qwen2ForCausalLM", tmp_path)) is None


def test_unsupported_architecture_is_refused_before_torch_loads(tmp_path):
    model = tmp_path / "mamba"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["MambaForCausalLM"], "model_type": "mamba"}))
    reason = builder.supports(ModelInfo.load(model))
    assert reason and "MambaForCausalLM" in reason and "Qwen2" in reason
    code = (
        "import sys\n"
        "from slmk.app import convert\n"
        "from slmk.errors import SlmkError\n"
        f"try:\n    convert({str(model)!r}, {str(tmp_path / 'out')!r}, plan_only=True)\n"
        "except SlmkError as exc:\n    print(exc.one_line())\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    message, imported = out.stdout.strip().splitlines()
    assert message.startswith("no converter supports this model: ortgenai-builder:") and "MambaForCausalLM" in message
    assert imported == "False False"


def test_planner_reports_the_reason(registry, tmp_path):
    with pytest.raises(UsageError, match="does not support MambaForCausalLM"):
        make_plan(registry, _info("MambaForCausalLM", tmp_path), CPU, ConvertRequest(tmp_path))


def test_unknown_and_bad_options_are_usage_errors():
    with pytest.raises(UsageError) as caught:
        builder.builder_options({"int4_block_size": 32}, trust_remote_code=False)
    assert "int4_block_size" in caught.value.message and "block_size" in caught.value.hint
    with pytest.raises(UsageError, match="block_size"):
        builder.builder_options({"block_size": 48}, trust_remote_code=False)
    with pytest.raises(UsageError, match="boolean"):
        builder.builder_options({"is_symmetric": "maybe"}, trust_remote_code=False)
    with pytest.raises(UsageError, match="algorithm"):
        builder.builder_options({"algorithm": "magic"}, trust_remote_code=False)
    pairs, notes = builder.builder_options(
        {"block_size": 64, "accuracy_level": "4", "is_symmetric": False, "algorithm": "k_quant"},
        trust_remote_code=False,
    )
    assert pairs == [
        "block_size=64",
        "accuracy_level=4",
        "is_symmetric=false",
        "algo_config=k_quant",
        "hf_token=false",
        "hf_remote=false",
    ]
    pairs, notes = builder.builder_options({"algorithm": "gptq"}, trust_remote_code=True)
    assert "hf_remote=true" in pairs and not any(p.startswith("algo_config") for p in pairs) and notes


def test_unknown_option_stops_convert_before_the_builder_runs(tiny_model_dir, tmp_path):
    request = _step_request(tiny_model_dir, tmp_path / "out", tmp_path / "work", int4_algo_config="rtn")
    with pytest.raises(UsageError, match="int4_algo_config"):
        builder.convert(request)
    assert not any((tmp_path / "out").iterdir())


def test_can_load_explains_what_is_missing(tiny_model_dir, tmp_path):
    assert "genai_config.json" in runtime.can_load(tiny_model_dir)
    (tmp_path / "genai_config.json").write_text(json.dumps({"model": {"decoder": {"filename": "model.onnx"}}}))
    assert "model.onnx" in runtime.can_load(tmp_path)
    with pytest.raises(UsageError, match="Hugging Face folder"):
        open_session(tiny_model_dir)


def test_search_defaults_cap_max_length():
    assert search_defaults(
        {"do_sample": True, "temperature": 0.7, "max_length": 32768, "eos_token_id": [1, 2]}, 512
    ) == {"do_sample": True, "temperature": 0.7, "max_length": 512}
    assert search_defaults({}, 512) == {}


# ------------------------------------------------------------------ real builds
@pytest.mark.parametrize("precision", ["int4", "int8", "fp32"])
def test_build_loads_and_answers(tiny_build, tiny_eval, precision):
    build = tiny_build(precision)
    files = {p.name: p.stat().st_size for p in build.iterdir()}
    assert {"genai_config.json", "model.onnx", "tokenizer.json"} <= set(files)
    print(f"{precision}: {sum(files.values()) / 1e6:.2f} MB")
    session = open_session(build)
    try:
        question = tiny_eval[0]["messages"]
        answer = "".join(session.generate(question, max_new_tokens=48, **GREEDY))
        assert answer.strip()
        stats = session.last_stats
        assert stats.prompt_tokens > 0 and 0 < stats.generated_tokens <= 48
        assert 0 < stats.time_to_first_token_s <= stats.total_s
        assert session.last_token_ids[-1] in session.eos_token_ids or len(session.last_token_ids) == 48
    finally:
        session.close()
    with pytest.raises(SlmkError, match="closed"):
        session.encode("hello")


@pytest.mark.slow
def test_build_carries_generation_defaults_and_chat_template(tiny_build, tiny_model_dir):
    build = tiny_build("int4")
    source = ModelInfo.load(tiny_model_dir)
    search = read_search(build)
    wanted = search_defaults(source.generation_config, ModelInfo.load(build).context_length)
    assert wanted, "the tiny model's generation_config.json sets sampling defaults"
    assert {key: search.get(key) for key in wanted} == wanted
    assert source.chat_template and ModelInfo.load(build).chat_template == source.chat_template


def test_a_dropped_chat_template_is_restored(tiny_build, tiny_model_dir, tmp_path):
    copy = tmp_path / "build"
    shutil.copytree(tiny_build("int4"), copy)
    (copy / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((copy / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (copy / "tokenizer_config.json").write_text(json.dumps(config))
    assert ModelInfo.load(copy).chat_template is None
    source = ModelInfo.load(tiny_model_dir)
    builder._complete_output(copy, source, _step_request(tiny_model_dir, tmp_path / "o", tmp_path / "w"))
    assert ModelInfo.load(copy).chat_template == source.chat_template
    with runtime.load(LoadRequest(path=copy, execution_provider=CPU)) as session:
        assert session.render_prompt([{"role": "user", "content": "hi"}]).endswith("assistant\n")


def test_fp32_greedy_matches_transformers_token_for_token(tiny_build, tiny_model_dir, tiny_eval):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    new_tokens = 32
    with open_session(tiny_build("fp32")) as session:
        for example in tiny_eval[:5]:
            messages = example["messages"]
            prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            hf_ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
            assert session.encode(session.render_prompt(messages)) == hf_ids[0].tolist()
            with torch.no_grad():
                out = model.generate(
                    hf_ids,
                    attention_mask=torch.ones_like(hf_ids),
                    max_length=hf_ids.shape[1] + new_tokens,
                    do_sample=False,
                    repetition_penalty=1.0,
                    top_k=None,
                    top_p=None,
                    temperature=None,
                    pad_token_id=tokenizer.pad_token_id,
                )
            expected = out[0, hf_ids.shape[1] :].tolist()
            "".join(session.generate(messages, max_new_tokens=new_tokens, **GREEDY))
            assert session.last_token_ids == expected, messages[-1]["content"]


def test_fp32_score_matches_transformers_loss(tiny_build, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    text = (tiny_model_dir.parent / "data" / "heldout.txt").read_text(encoding="utf-8")[:3000]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with open_session(tiny_build("fp32")) as session:
        ids = session.encode(text)
        window = min(len(ids), session.context_length)
        nll, count = session.score(text, window=window)
        with torch.no_grad():
            loss = model(torch.tensor([ids[:window]]), labels=torch.tensor([ids[:window]])).loss.item()
        if window == len(ids):
            assert count == len(ids) - 1
            assert nll / count == pytest.approx(loss, rel=1e-3)
        # Sliding windows score every token once, whatever the window.
        small_nll, small_count = session.score(text, window=64, stride=48)
        assert small_count == len(ids) - 1
        assert small_nll / small_count == pytest.approx(nll / count, rel=0.25)
        print(f"fp32 perplexity on heldout: {session.perplexity(text):.2f} over {count} tokens")


def test_int4_answers_most_eval_questions(tiny_build, tiny_eval):
    correct = 0
    with open_session(tiny_build("int4")) as session:
        for example in tiny_eval:
            answer = "".join(session.generate(example["messages"], max_new_tokens=64, **GREEDY))
            correct += example["expected"].lower() in answer.lower()
    rate = correct / len(tiny_eval)
    print(f"int4 eval accuracy: {correct}/{len(tiny_eval)} = {rate:.2f}")
    assert rate >= 0.7


def test_too_long_prompt_is_a_clean_error_or_truncated(tiny_build):
    with open_session(tiny_build("int4")) as session:
        long_text = "tell me more " * (session.context_length // 2)
        messages = [{"role": "user", "content": long_text}]
        with pytest.raises(SlmkError, match="context holds"):
            session.generate(messages)
        answer = "".join(session.generate(messages, truncate=True, max_new_tokens=8, **GREEDY))
        assert session.last_stats.prompt_tokens <= session.context_length - 8
        assert isinstance(answer, str)
        with pytest.raises(UsageError, match="unknown search option"):
            session.generate(messages, beam_width=3)
        with pytest.raises(UsageError):
            session.generate([{"role": "user"}])


def test_builder_failure_leaves_the_output_empty(tiny_model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    config = json.loads((broken / "config.json").read_text())
    config["num_attention_heads"] = config["num_attention_heads"] + 1  # no longer divides hidden_size
    (broken / "config.json").write_text(json.dumps(config))
    request = _step_request(broken, tmp_path / "out", tmp_path / "work")
    with pytest.raises(StepFailed) as caught:
        builder.convert(request)
    line = caught.value.one_line()
    assert "model builder failed" in line and "\n" not in line
    assert not any((tmp_path / "out").iterdir())
    assert (tmp_path / "work" / "builder.log").stat().st_size > 0


@pytest.mark.slow
def test_a_build_the_provider_cannot_run_is_refused_at_load(tiny_build, tmp_path):
    copy = tmp_path / "fp16-build"
    shutil.copytree(tiny_build("int4"), copy)
    info = json.loads((copy / "slmk_build.json").read_text())
    (copy / "slmk_build.json").write_text(json.dumps({**info, "precision": "fp16"}))
    with pytest.raises(SlmkError) as caught:
        runtime.load(LoadRequest(path=copy, execution_provider=CPU))
    assert "fp16 build" in caught.value.message and "-p int4" in caught.value.hint


# ------------------------------------------------------------------ sliding windows and builder fixes
@pytest.mark.parametrize(
    ("sliding_window", "context", "expected"),
    [
        ({"window_size": 4096, "layers": [0]}, 8192, 4096),  # Gemma 2: a sliding layer
        ({"window_size": 2047, "layers": []}, 4096, 0),  # Phi-3: a window, no sliding layer
        ({"window_size": 262144, "layers": []}, 131072, 0),  # Phi-3.5: never a 131072-token cache
        ({"window_size": 4096}, 2048, 2048),  # an older build slides every layer; capped at the context
        (None, 4096, 0),
    ],
)
def test_the_kv_cache_is_at_least_a_sliding_layers_window(sliding_window, context, expected):
    decoder = {"sliding_window": sliding_window} if sliding_window else {}
    config = {"model": {"context_length": context, "decoder": decoder}}
    assert runtime._min_cache_length(config) == expected


def test_per_layer_type_rope_parameters_are_flattened_for_the_builder():
    """transformers 5 loads Gemma 3's RoPE per layer type, even from a 4.x config.json."""
    from transformers import AutoConfig

    v4_fields = {"rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "rope_scaling": None}
    config = AutoConfig.for_model("gemma3_text", num_hidden_layers=2, sliding_window_pattern=2, **v4_fields)
    assert "rope_type" not in config.rope_parameters  # what the 0.18 builder fails on
    builder.flatten_rope_parameters(config)
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 1000000.0}
    assert config.rope_local_base_freq == 10000.0
    llama = AutoConfig.for_model("llama", rope_theta=500000.0)
    assert builder.flatten_rope_parameters(llama).rope_parameters == {"rope_type": "default", "rope_theta": 500000.0}
