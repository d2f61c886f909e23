"""What real fine-tune folders look like (issue #9, part 4): sharded safetensors, bf16
weights, chat_template.jinja beside tokenizer_config.json, several eos ids, pickled
weights only, and the training leftovers that must not reach a build.

The folders are the tiny chat model re-saved by transformers the way trainers save them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from slmk.api import ModelInfo, UsageError
from slmk.api.operations import convert, open_session

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)
QUESTION = [{"role": "user", "content": "How many moons does Veltra have?"}]


@pytest.fixture(scope="module")
def resaved(tiny_model_dir, tmp_path_factory):
    """save(name, **save_pretrained kwargs) -> a folder of the tiny model saved that way, with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("real-folders")
    made: dict[str, Path] = {}

    def save(name: str, dtype=torch.float32, **kwargs) -> Path:
        if name not in made:
            model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype)
            folder = root / name
            model.save_pretrained(folder, **kwargs)
            for file in TOKENIZER_FILES:
                shutil.copy2(tiny_model_dir / file, folder / file)
            made[name] = folder
        return made[name]

    return save


def _answer_ids(build: Path) -> list[int]:
    session = open_session(build)
    try:
        "".join(session.generate(QUESTION, do_sample=False, max_new_tokens=12))
        return list(session.last_token_ids)
    finally:
        session.close()


def test_sharded_safetensors_with_an_index_build_the_same_model(resaved, tiny_build, tmp_path):
    folder = resaved("sharded", max_shard_size="1MB")
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) > 1 and (folder / "model.safetensors.index.json").is_file()
    assert ModelInfo.load(folder).num_parameters == 1_224_832  # every shard counted
    build = convert(folder, tmp_path / "out", precision="fp32").output
    assert _answer_ids(build) == _answer_ids(tiny_build("fp32")), "shards convert to the very same model"


def test_bf16_weights_build_and_answer(resaved, tmp_path):
    import torch

    folder = resaved("bf16", dtype=torch.bfloat16)
    info = ModelInfo.load(folder)
    assert info.dtype == "bfloat16"
    build = convert(folder, tmp_path / "out", precision="int4").output
    session = open_session(build)
    try:
        answer = "".join(session.generate(QUESTION, do_sample=False, max_new_tokens=16))
    finally:
        session.close()
    assert "four" in answer.lower()


def test_chat_template_jinja_wins_over_tokenizer_config_as_in_transformers(resaved, tmp_path):
    from transformers import AutoTokenizer

    folder = tmp_path / "both"
    shutil.copytree(resaved("plain"), folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}OLD {{ m.content }}{% endfor %}"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    jinja = (folder / "chat_template.jinja").read_text()
    expected = AutoTokenizer.from_pretrained(folder).chat_template
    assert expected == jinja, "transformers reads chat_template.jinja first"
    assert ModelInfo.load(folder).chat_template == jinja
    build = convert(folder, tmp_path / "out", precision="int4").output
    assert ModelInfo.load(build).chat_template == jinja


def test_several_eos_ids_all_end_the_answer(resaved, tmp_path):
    folder = tmp_path / "eos"
    shutil.copytree(resaved("plain"), folder)
    generation = json.loads((folder / "generation_config.json").read_text())
    generation["eos_token_id"] = [2, 0]  # <|im_end|> and <|endoftext|>, as chat fine-tunes often list
    (folder / "generation_config.json").write_text(json.dumps(generation))
    build = convert(folder, tmp_path / "out", precision="int4").output
    eos = json.loads((build / "genai_config.json").read_text())["model"]["eos_token_id"]
    assert set([eos] if isinstance(eos, int) else eos) >= {0, 2}
    session = open_session(build)
    try:
        assert session.eos_token_ids >= {0, 2}
    finally:
        session.close()


@pytest.mark.slow
def test_pickled_weights_are_refused_unless_allowed(resaved, tmp_path, run_slmk):
    import torch

    folder = tmp_path / "pickled"
    shutil.copytree(resaved("plain"), folder)
    # transformers 5 always writes safetensors; older trainers wrote this pickle
    tensors = __import__("safetensors.torch", fromlist=["load_file"]).load_file(folder / "model.safetensors")
    torch.save(tensors, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    assert (folder / "pytorch_model.bin").is_file() and not list(folder.glob("*.safetensors"))
    out = tmp_path / "out"
    result = run_slmk("convert", str(folder), "-p", "int4", "-o", str(out))
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "--allow-pickle" in errors[0], result.stderr
    assert not out.exists()
    with pytest.raises(UsageError, match="pickles"):
        convert(folder, out, precision="int4")
    allowed = run_slmk("convert", str(folder), "-p", "int4", "-o", str(out), "--allow-pickle")
    assert allowed.returncode == 0, allowed.stderr
    assert (out / "genai_config.json").is_file()


def test_training_leftovers_do_not_reach_the_build(resaved, tmp_path):
    folder = tmp_path / "trained"
    shutil.copytree(resaved("plain"), folder)
    (folder / "optimizer.pt").write_bytes(b"\0" * 100_000)
    (folder / "training_args.bin").write_bytes(b"\0" * 1000)
    (folder / "trainer_state.json").write_text("{}")
    checkpoint = folder / "checkpoints" / "checkpoint-10"
    checkpoint.mkdir(parents=True)
    shutil.copy2(folder / "model.safetensors", checkpoint / "model.safetensors")
    build = convert(folder, tmp_path / "out", precision="int4").output
    names = {p.relative_to(build).as_posix() for p in build.rglob("*")}
    assert not names & {"optimizer.pt", "training_args.bin", "trainer_state.json", "checkpoints"}
    assert not [n for n in names if n.startswith("checkpoints/")]


def test_a_folder_without_weights_is_one_clear_line(tmp_path, tiny_model_dir, run_slmk):
    folder = tmp_path / "empty-weights"
    folder.mkdir()
    for file in ("config.json", *TOKENIZER_FILES):
        shutil.copy2(tiny_model_dir / file, folder / file)
    result = run_slmk("convert", str(folder), "-p", "int4", "-o", str(tmp_path / "out"))
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "no weights" in errors[0], result.stderr
