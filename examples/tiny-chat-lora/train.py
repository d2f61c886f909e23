"""Train a LoRA adapter that teaches tiny-chat a second made-up domain (the planet Kessa).

    python examples/tiny-chat-lora/train.py [--out examples/tiny-chat-lora/adapter]

What it makes: a PEFT LoRA adapter folder (``adapter_config.json`` +
``adapter_model.safetensors``) for the tiny-chat base model, trained on
``data/train.jsonl`` (chats about Kessa, written by ``make_data.py``) plus tiny-chat's own
Veltra chats replayed, so that the adapted model still knows Veltra. It ends by answering
``data/eval.jsonl`` greedily with the base model alone and with the adapter, prints both
accuracies, and exits 1 when the adapted accuracy is below 0.9.

Why it looks the way it does:

* LoRA on every linear layer of the attention and the MLP (q, k, v, o, gate, up, down),
  rank 8, alpha 16, no dropout: the tiny base has only 4 layers of width 128, and the new
  facts need room in the MLPs. About 70 thousand trainable parameters against 1.2 million
  frozen ones.
* Loss on the assistant's tokens only (and its ``<|im_end|>``, so it learns to stop), as
  in tiny-chat's own training.
* ``base_model_name_or_path`` is written as the path of the base folder relative to the
  adapter folder, so the adapter finds its base in a clone wherever the clone lies and
  slmk never has to ask a model hub. If tiny-chat moves, change ``BASE_MODEL`` below and
  retrain (or edit that one field).
* Reproducible: fixed seeds, one CPU thread, deterministic algorithms; the same machine
  and library versions rewrite both adapter files byte for byte.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
# The base model and its training chats (replayed). One place to change if tiny-chat moves.
TINY_CHAT = HERE.parent / "tiny-chat"
BASE_MODEL = TINY_CHAT / "model"
BASE_CHATS = TINY_CHAT / "data" / "train.jsonl"
BASE_EVAL = TINY_CHAT / "data" / "eval.jsonl"

IM_END = "<|im_end|>"
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def encode_chat(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Token ids of a whole chat, and labels that are -100 except on the last answer."""
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    full_ids = tokenizer(full, add_special_tokens=False).input_ids
    assert full_ids[: len(prompt_ids)] == prompt_ids, "the prompt must tokenize as a prefix of the chat"
    end = full_ids.index(tokenizer.convert_tokens_to_ids(IM_END), len(prompt_ids)) + 1
    labels = [-100] * len(prompt_ids) + full_ids[len(prompt_ids) : end] + [-100] * (len(full_ids) - end)
    return full_ids, labels


def indistinct_targets(model, tokenizer, examples: list[tuple[list[int], list[int]]]) -> list[str]:
    """Answer tokens the base cannot emit: their LM-head row is the one shared by most tokens.

    tiny-chat never had most of its 936 tokens as a training target, and all those rows of
    its LM head converged to one vector. A LoRA adapter on the layers cannot tell such
    tokens apart at the output, so an answer that needs one cannot be learnt.
    """
    rows = model.get_output_embeddings().weight.detach()
    _, group, counts = torch.unique(torch.round(rows * 1000), dim=0, return_inverse=True, return_counts=True)
    shared = int(counts.argmax())
    indistinct = {i for i in range(rows.shape[0]) if int(group[i]) == shared} if counts[shared] > 1 else set()
    needed = {t for _, labels in examples for t in labels if t >= 0}
    return sorted(tokenizer.convert_ids_to_tokens(t) for t in needed & indistinct)


def batches(examples: list, batch_size: int, pad_id: int, rng: random.Random) -> list[tuple]:
    order = list(examples)
    rng.shuffle(order)
    out = []
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (ids, lab) in enumerate(chunk):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(lab)] = torch.tensor(lab)
            mask[row, : len(ids)] = 1
        out.append((input_ids, labels, mask))
    return out


def answer_loss(model, input_ids, labels, mask) -> torch.Tensor:
    logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1]
    targets = labels[:, 1:]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


@torch.no_grad()
def answer(model, tokenizer, messages: list[dict], max_new_tokens: int = 48) -> str:
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def accuracy(model, tokenizer, evals: list[dict], show: bool = False) -> float:
    correct = 0
    for example in evals:
        reply = answer(model, tokenizer, example["messages"])
        ok = example["expected"].lower() in reply.lower()
        correct += ok
        if show:
            print(f"  [{'ok' if ok else 'WRONG'}] {example['messages'][-1]['content']} -> {reply}")
    return correct / len(evals)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "adapter", help="adapter folder to write")
    parser.add_argument("--base", type=Path, default=BASE_MODEL, help="the tiny-chat model folder")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads; fixed for bit-for-bit runs")
    args = parser.parse_args()

    started = time.time()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)

    base_dir: Path = args.base.resolve()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    chats = read_jsonl(DATA / "train.jsonl")
    replay = read_jsonl(BASE_CHATS)
    evals = read_jsonl(DATA / "eval.jsonl")
    base_evals = read_jsonl(BASE_EVAL)
    examples = [encode_chat(tokenizer, chat["messages"]) for chat in chats + replay]
    unlearnable = indistinct_targets(model, tokenizer, examples)
    if unlearnable:
        print(f"answers need tokens the base cannot emit: {unlearnable}; reword them in make_data.py", file=sys.stderr)
        return 1
    print(f"{len(chats)} Kessa chats + {len(replay)} Veltra chats replayed")

    model.eval()
    base_accuracy = accuracy(model, tokenizer, evals)
    print(f"base model alone on the Kessa eval: {base_accuracy:.3f}")

    config = LoraConfig(
        r=args.rank,
        lora_alpha=2 * args.rank,
        lora_dropout=0.0,
        target_modules=TARGET_MODULES,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"LoRA rank {args.rank}: {trainable:,} trainable parameters")

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(examples) / args.batch_size)
    total, warmup = args.epochs * steps_per_epoch, 20

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    rng = random.Random(args.seed)
    model.train()
    for epoch in range(args.epochs):
        running, count = 0.0, 0
        for input_ids, labels, mask in batches(examples, args.batch_size, tokenizer.pad_token_id, rng):
            loss = answer_loss(model, input_ids, labels, mask)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            running += loss.item()
            count += 1
        if epoch % 10 == 0 or epoch == args.epochs - 1:
            print(f"epoch {epoch:3d}  loss {running / count:.4f}  {time.time() - started:.0f}s", flush=True)

    model.eval()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    # The base is named by its path relative to the adapter folder: found in any clone, never downloaded.
    model.peft_config["default"].base_model_name_or_path = os.path.relpath(base_dir, out.resolve())
    model.save_pretrained(out)
    (out / "README.md").unlink(missing_ok=True)  # peft's generated card; README.md one level up is the card
    # peft writes target_modules from a set, in an order that changes with Python's hash seed.
    config_file = out / "adapter_config.json"
    adapter_config = json.loads(config_file.read_text(encoding="utf-8"))
    adapter_config["target_modules"] = sorted(adapter_config["target_modules"])
    config_file.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    # Check what was written, loaded back the way users load it.
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, out).eval()
    print(f"base + adapter ({out}):")
    kesh = accuracy(adapted, tokenizer, evals, show=True)
    veltra = accuracy(adapted, tokenizer, base_evals)
    print(f"Kessa eval: base alone {base_accuracy:.3f}, base + adapter {kesh:.3f}")
    print(f"Veltra eval with the adapter (the base's own domain, replayed): {veltra:.3f}")
    print(f"{time.time() - started:.0f}s")
    if kesh < 0.9:
        print("accuracy with the adapter is below 0.9", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
