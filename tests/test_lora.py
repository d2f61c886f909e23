"""LoRA adapters (PEFT folders): the committed tiny-chat-lora adapter, really merged, really
built by the onnxruntime-genai model builder, really run by onnxruntime-genai (and the
Foundry Local SDK), plus one clear error for each kind of bad adapter.

The adapter (examples/tiny-chat-lora/adapter) teaches tiny-chat the made-up planet Kessa;
its eval set has 20 questions with the substring a right answer holds.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import slmk_build
import slmk_foundry
import slmk_ortgenai
import slmk_system
from slmk_foundry import sdk
from slmk_ortgenai import adapters

from slmk import app
from slmk.errors import UsageError
from slmk.records import ConvertRequest
from slmk.testing import make_registry

REPO = Path(__file__).resolve().parent.parent
LORA = REPO / "examples" / "tiny-chat-lora"
ADAPTER = LORA / "adapter"
TINY_MODEL = REPO / "examples" / "tiny-chat" / "model"
ADAPTER_NAME = "tiny-chat-lora"  # the folder is "adapter": the file is named after its parent
GREEDY = {"do_sample": False, "max_new_tokens": 48}
BASE = object()  # "use the session's default": generate() without an adapter argument


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


KESSA_EVAL = read_jsonl(LORA / "data" / "eval.jsonl")


@pytest.fixture(scope="module")
def registry():
    return make_registry(slmk_system, slmk_ortgenai, slmk_foundry, slmk_build)


@pytest.fixture(scope="module")
def builds(tmp_path_factory, registry) -> dict[str, Path]:
    """The adapter built both ways, at int4 and fp32 (about a second each)."""
    root = tmp_path_factory.mktemp("lora-builds")
    out = {}
    for mode in adapters.MODES:
        for precision in ("int4", "fp32"):
            folder = root / f"{mode}-{precision}"
            adapters.convert_adapter(
                ConvertRequest(ADAPTER, folder, precision=precision, source_mode=mode), registry=registry
            )
            out[f"{mode}-{precision}"] = folder
    return out


def answers(session, questions: list[dict], adapter=BASE) -> list[str]:
    extra = {} if adapter is BASE else {"adapter": adapter}
    return ["".join(session.generate(q["messages"], **GREEDY, **extra)).strip() for q in questions]


def rate(replies: list[str], questions: list[dict]) -> float:
    hits = sum(q["expected"].lower() in reply.lower() for reply, q in zip(replies, questions, strict=True))
    return hits / len(questions)


def snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


# ------------------------------------------------------------------ recognise, resolve, merge
def test_the_committed_adapter_is_recognised_and_finds_its_base():
    assert adapters.is_adapter(ADAPTER) and not adapters.is_adapter(TINY_MODEL)
    adapter = adapters.resolve(ADAPTER)
    # base_model_name_or_path is "../../tiny-chat/model", relative to the adapter folder
    assert adapter.base == TINY_MODEL.resolve() and adapter.base_source == "adapter_config.json"
    assert adapter.name == ADAPTER_NAME and adapter.rank == 8
    assert len(adapter.modules) == 4 * 7  # 4 layers x q k v o gate up down
    info = adapters.describe(ADAPTER)
    assert info["base_architecture"] == "Qwen2ForCausalLM" and info["parameters"] == 90_112
    assert adapters.resolve(ADAPTER, base=TINY_MODEL).base_source == "--base"


def test_a_hub_id_base_is_found_with_base_and_never_downloaded(tmp_path):
    folder = tmp_path / "hub-adapter"
    shutil.copytree(ADAPTER, folder)
    _rewrite_config(folder, base_model_name_or_path="Qwen/Qwen2.5-0.5B-Instruct")
    with pytest.raises(UsageError, match="model hub id"):
        adapters.resolve(folder)
    assert adapters.resolve(folder, base=TINY_MODEL).base == TINY_MODEL.resolve()


def test_merge_equals_peft_merge_and_keeps_the_base_files(tmp_path):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    adapter = adapters.resolve(ADAPTER)
    merged = adapters.merged_model(adapter, cache_dir=tmp_path)
    assert adapters.merged_model(adapter, cache_dir=tmp_path) == merged  # made once, then cached
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (merged / name).read_bytes() == (TINY_MODEL / name).read_bytes(), name
    assert (merged / "chat_template.jinja").read_bytes() == (TINY_MODEL / "chat_template.jinja").read_bytes()

    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(TINY_MODEL), ADAPTER)
    expected = reference.merge_and_unload().state_dict()
    ours, base = load_file(merged / "model.safetensors"), load_file(TINY_MODEL / "model.safetensors")
    assert set(ours) == set(base)
    changed = [name for name in ours if not torch.equal(ours[name], base[name])]
    assert len(changed) == 28  # exactly the adapted weights moved
    for name, tensor in ours.items():
        torch.testing.assert_close(tensor, expected[name], atol=1e-6, rtol=0)


# ------------------------------------------------------------------ the rates
@pytest.mark.slow
def test_merged_build_answers_the_new_domain_and_the_base_alone_does_not(builds, tiny_build, tiny_eval):
    with app.open_session(builds["merge-int4"]) as merged:
        merged_rate = rate(answers(merged, KESSA_EVAL), KESSA_EVAL)
        veltra_rate = rate(answers(merged, tiny_eval), tiny_eval)  # the base's domain was replayed in training
    with app.open_session(tiny_build("int4")) as base:
        base_rate = rate(answers(base, KESSA_EVAL), KESSA_EVAL)
    print(f"Kessa eval, int4: merged {merged_rate:.2f}, base alone {base_rate:.2f}; merged on Veltra {veltra_rate:.2f}")
    assert merged_rate >= 0.9  # measured 20/20
    assert base_rate <= 0.1  # measured 1/20
    assert veltra_rate >= 0.9
    info = json.loads((builds["merge-int4"] / "slmk_build.json").read_text())
    assert info["adapter"]["mode"] == "merge" and info["adapter"]["sha256"] == adapters.resolve(ADAPTER).digest()


def test_base_plus_separate_adapter_answers_the_same(builds):
    assert (builds["separate-int4"] / "adapters" / f"{ADAPTER_NAME}.onnx_adapter").is_file()
    with app.open_session(builds["separate-int4"]) as session:
        with_adapter = answers(session, KESSA_EVAL, adapter=ADAPTER_NAME)
        without = answers(session, KESSA_EVAL)
    print(f"Kessa eval, int4 base + separate adapter: {rate(with_adapter, KESSA_EVAL):.2f}")
    assert rate(with_adapter, KESSA_EVAL) >= 0.9
    assert rate(without, KESSA_EVAL) <= 0.1
    # At fp32 the two ways are the same model: token for token the same answers.
    with app.open_session(builds["merge-fp32"]) as merged, app.open_session(builds["separate-fp32"]) as separate:
        assert answers(merged, KESSA_EVAL) == answers(separate, KESSA_EVAL, adapter=ADAPTER_NAME)


def test_adapters_switch_per_request_on_one_loaded_base(builds, tiny_build, tmp_path):
    questions = [
        KESSA_EVAL[0],
        KESSA_EVAL[11],
        {"messages": [{"role": "user", "content": "How many moons does Veltra have?"}]},
    ]
    with app.open_session(tiny_build("int4")) as plain:
        base_answers = answers(plain, questions)
    # A second adapter for the same build: the same layers with B = 0, i.e. no change at all.
    silent = tmp_path / "silent"
    shutil.copytree(ADAPTER, silent)
    _rewrite_tensors(silent, lambda name, t: t * 0 if "lora_B" in name else t)
    _rewrite_config(silent, base_model_name_or_path=str(TINY_MODEL))
    build = builds["separate-int4"]
    exported = adapters.export_onnx_adapter(adapters.resolve(silent), build, "silent")
    try:
        with app.open_session(build) as session:
            kessa = answers(session, questions, adapter=ADAPTER_NAME)
            assert answers(session, questions) == base_answers  # no adapter: exactly the base build
            assert answers(session, questions, adapter="silent") == base_answers
            assert (
                answers(session, questions, adapter=str(build / "adapters" / f"{ADAPTER_NAME}.onnx_adapter")) == kessa
            )
            assert answers(session, questions, adapter=None) == base_answers
            assert answers(session, questions, adapter=ADAPTER_NAME) == kessa
            assert session.available_adapters() == sorted([ADAPTER_NAME, "silent"])
            with pytest.raises(UsageError, match="has no adapter 'nope'"):
                session.generate(questions[0]["messages"], adapter="nope")
        assert "two moons" in kessa[0] and "Fenmor" in kessa[1] and "four moons" in kessa[2]
        assert "two moons" not in base_answers[0]
    finally:
        exported.unlink()
    # The load option sets the session's default adapter.
    session = slmk_ortgenai.runtime.OrtGenAISession(build, slmk_system.providers.CPU, {"adapter": ADAPTER_NAME})
    with session:
        assert answers(session, questions[:1]) == kessa[:1]
    with app.open_session(builds["merge-int4"]) as merged, pytest.raises(UsageError, match="not built for separate"):
        merged.generate(questions[0]["messages"], adapter=ADAPTER_NAME)


def test_foundry_local_runs_the_merged_build_but_cannot_activate_an_adapter(builds, registry):
    """Measured with foundry-local-sdk 2.2.1: it loads both builds; it has no adapter API, so a
    separate-mode build answers as the base there (the LoRA inputs keep their empty defaults)."""
    import foundry_local_sdk

    public = [name for name in dir(foundry_local_sdk) if "adapter" in name.lower() or "lora" in name.lower()]
    assert public == []
    try:
        rates = {}
        for mode in ("merge", "separate"):
            session = app.open_session(builds[f"{mode}-int4"], runtime="foundry", registry=registry)
            try:
                rates[mode] = rate(answers(session, KESSA_EVAL[:10]), KESSA_EVAL[:10])
            finally:
                session.close()
    finally:
        sdk.close()
    print(f"Foundry Local, Kessa eval (10): merged {rates['merge']:.2f}, separate build {rates['separate']:.2f}")
    assert rates["merge"] >= 0.9 and rates["separate"] <= 0.1


# ------------------------------------------------------------------ bad adapters
def _rewrite_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "adapter_config.json").read_text())
    config.update(changes)
    (folder / "adapter_config.json").write_text(json.dumps(config))


def _rewrite_tensors(folder: Path, change) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "adapter_model.safetensors")
    changed = {}
    for name, tensor in tensors.items():
        result = change(name, tensor)  # a tensor, (new name, tensor), or None to drop it
        if result is not None:
            new_name, value = result if isinstance(result, tuple) else (name, result)
            changed[new_name] = value.contiguous()
    save_file(changed, folder / "adapter_model.safetensors")


def _bad_adapter(tmp_path: Path, kind: str) -> tuple[Path, dict]:
    import torch

    folder = tmp_path / f"bad-{kind}"
    shutil.copytree(ADAPTER, folder)
    _rewrite_config(folder, base_model_name_or_path=str(TINY_MODEL))
    kwargs: dict = {}
    if kind == "hub-id":
        _rewrite_config(folder, base_model_name_or_path="Qwen/Qwen2.5-0.5B-Instruct")
    elif kind == "missing-base":
        _rewrite_config(folder, base_model_name_or_path="../no-such-model")
    elif kind == "missing-base-option":
        kwargs["base"] = tmp_path / "nowhere"
    elif kind == "other-architecture":  # GPT-2 style module names, which a Qwen2 base does not have
        _rewrite_tensors(folder, lambda n, t: (n.replace("model.layers.", "transformer.h."), t))
    elif kind == "other-shape":  # a wider model's q_proj (256 instead of 128)
        _rewrite_tensors(
            folder,
            lambda n, t: torch.zeros(t.shape[0], 256) if "layers.0.self_attn.q_proj.lora_A" in n else t,
        )
    elif kind == "unsupported-targets":
        _rewrite_config(folder, target_modules=["q_proj", "lm_head"])
    elif kind == "not-lora":
        _rewrite_config(folder, peft_type="IA3")
    elif kind == "alpha-nan":
        _rewrite_config(folder, lora_alpha=float("nan"))  # json writes NaN, which json reads back
    elif kind == "alpha-huge":
        _rewrite_config(folder, lora_alpha=1e308)
    elif kind == "alpha-pattern-string":
        _rewrite_config(folder, alpha_pattern="q_proj")
    elif kind == "alpha-pattern-nan":
        _rewrite_config(folder, alpha_pattern={"q_proj": float("nan")})
    elif kind == "target-modules-number":
        _rewrite_config(folder, target_modules=5)
    elif kind == "truncated":  # the header is whole, the weights are cut short
        weights = folder / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-100])
    elif kind == "bad-header":
        weights = folder / "adapter_model.safetensors"
        header = b'{"x.lora_A.weight": 5}'
        weights.write_bytes(len(header).to_bytes(8, "little") + header)
    elif kind == "nan-weights":
        _rewrite_tensors(
            folder, lambda n, t: torch.full_like(t, float("nan")) if "layers.1.mlp.up_proj.lora_B" in n else t
        )
    return folder, kwargs


BAD = {
    "hub-id": r"model hub id, and slmk never downloads.*--base DIR",
    "missing-base": r"base model .*no-such-model does not exist",
    "missing-base-option": r"base model .*nowhere does not exist",
    "other-architecture": r"which the base model \(Qwen2ForCausalLM\) does not have.*another architecture",
    "other-shape": r"q_proj is 128x256 and the base's is 128x128.*another size",
    "unsupported-targets": r"targets lm_head, which slmk cannot merge or build",
    "not-lora": r"is IA3, not LoRA",
    "alpha-nan": r"lora_alpha = nan is not a number in \(0, 65536\]",
    "alpha-huge": r"lora_alpha = 1e\+308 is not a number in \(0, 65536\]",
    "alpha-pattern-string": r"alpha_pattern is str, not a table of module names",
    "alpha-pattern-nan": r"alpha_pattern\['q_proj'\] = nan is not a number",
    "target-modules-number": r"target_modules = 5 is not a module name or a list of them",
    "truncated": r"lies beyond the end of the file .* the file is truncated",
    "bad-header": r"tensor 'x.lora_A.weight' is not described by an object",
    "nan-weights": r"layers.1.mlp.up_proj.lora_B.weight holds NaN or infinite values",
}


@pytest.mark.parametrize("kind", sorted(BAD))
@pytest.mark.parametrize("mode", adapters.MODES)
def test_each_bad_adapter_is_one_clear_error_and_writes_nothing(tmp_path, registry, kind, mode):
    folder, kwargs = _bad_adapter(tmp_path, kind)
    cache, output = tmp_path / "cache", tmp_path / "out"
    before = snapshot(tmp_path)
    with pytest.raises(UsageError) as caught:
        adapters.convert_adapter(
            ConvertRequest(folder, output, source_mode=mode, cache_dir=cache, **kwargs), registry=registry
        )
    error = caught.value
    text = f"{error} | {getattr(error, 'hint', '')}"
    assert "\n" not in str(error)
    assert re.search(BAD[kind], text), text
    assert snapshot(tmp_path) == before  # no output, no cache, no merged folder


def test_a_separate_adapter_file_only_fits_a_build_made_for_its_layers(builds, tmp_path):
    narrow = tmp_path / "narrow"  # an adapter on q_proj only
    shutil.copytree(ADAPTER, narrow)
    _rewrite_config(narrow, base_model_name_or_path=str(TINY_MODEL), target_modules=["q_proj"])
    _rewrite_tensors(narrow, lambda n, t: t if "q_proj" in n else None)
    before = snapshot(builds["separate-int4"])
    with pytest.raises(UsageError, match="adapts other layers than the build"):
        adapters.export_onnx_adapter(adapters.resolve(narrow), builds["separate-int4"], "narrow")
    with pytest.raises(UsageError, match="has no LoRA inputs"):
        adapters.export_onnx_adapter(adapters.resolve(ADAPTER), builds["merge-int4"], "x")
    assert snapshot(builds["separate-int4"]) == before


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["truncated", "alpha-pattern-string", "target-modules-number"])
def test_inspect_refuses_a_damaged_adapter_in_one_line(tmp_path, run_slmk, kind):
    folder, _ = _bad_adapter(tmp_path, kind)
    done = run_slmk("inspect", str(folder), timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len(lines) == 1 and re.search(BAD[kind], lines[0]), lines
