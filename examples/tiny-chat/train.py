"""Train the tiny chat model from scratch: tokenizer, weights, and a Hugging Face folder.

    python examples/tiny-chat/train.py [--out examples/tiny-chat/model]

What it makes: a small Qwen2-architecture chat model (``Qwen2ForCausalLM``) with a
byte-level BPE tokenizer and a ChatML chat template, trained on ``data/train.jsonl``
(question-and-answer chats about the made-up planet Veltra) and ``data/corpus.txt``
(prose about the same world). It runs on the CPU in a few minutes, with fixed seeds, and
ends by answering every question of ``data/eval.jsonl`` greedily; it exits non-zero when
fp32 accuracy is below 0.9.

Why it looks the way it does:

* The tokenizer is exactly what ``transformers``' ``Qwen2Tokenizer`` builds (NFC, the
  Qwen2 split regex, byte-level BPE). ``AutoTokenizer`` in transformers 5 loads any
  ``model_type: qwen2`` folder as a ``Qwen2Tokenizer`` and rebuilds that pipeline around the
  vocabulary, and so does the ONNX Runtime GenAI model builder when it copies the tokenizer
  into a build. A tokenizer trained with another pre-tokenizer would tokenize differently
  after conversion than in training.
* Loss is on the assistant's tokens only (plus its ``<|im_end|>``, so it learns to stop),
  and ordinary language-model loss on the prose: the prose as written, and every epoch a
  new document of its sentences (and the answers) in a shuffled order, so perplexity on
  held-out prose means something. The loss is smoothed towards the tokens' unigram
  frequencies (``--smoothing``), which keeps the model from being infinitely sure of
  itself on a few thousand tokens of text.
* Every answer is learnt with a wide margin (the right token leads the next one by about
  four nats everywhere), so greedy answers survive int4 and int8 weight rounding. The
  training is deliberately not quantization-aware: int4 rounding should still show a
  little (in perplexity, and in greedy agreement with fp32 on open prompts), as with real
  models, so that comparing precisions shows something. The script reports a simulated
  int4 at the end.
* Embeddings and LM head are untied: the model builder then keeps the embedding table in
  full precision and quantizes the LM head as one more MatMul, the simplest graph.
* rope_theta is 10000, the default of every transformers version: transformers 5 writes
  it under ``rope_parameters``, where older readers of config.json do not look.
* Reproducible: fixed seeds, a fixed number of CPU threads, deterministic algorithms.
  The same machine and library versions give the same bytes; another CPU or torch may
  differ in the last bits, and the accuracy check at the end is what must hold.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import transformers
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2 (as in SmolLM2)
ENDOFTEXT, IM_START, IM_END = SPECIAL_TOKENS

# Standard ChatML, as SmolLM2 and Qwen write it, without a default system message.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

MODEL = dict(
    hidden_size=128,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=4,  # head_dim 32
    num_key_value_heads=2,  # grouped-query attention, as in real Qwen2 models
    max_position_embeddings=512,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)
VOCAB_SIZE = 1024  # upper bound for the BPE trainer (bytes and special tokens included);
# with min_frequency 2 the domain text stops it at about 900
CONTEXT = 512
CORPUS_WINDOW = 256  # prose is cut into windows of this many tokens, half overlapping


# ----------------------------------------------------------------------------- data
def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def train_tokenizer(chats: list[dict], corpus: str, out: Path) -> Qwen2Tokenizer:
    """Byte-level BPE on the domain text, wrapped as the Qwen2Tokenizer that loads it later."""
    bpe = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix=""))
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    texts = [corpus] + [m["content"] for chat in chats for m in chat["messages"]]
    texts += ["system\n", "user\n", "assistant\n"]  # the role lines of the template
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is encodable
    )
    bpe.train_from_iterator(texts, trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=state["vocab"],
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        extra_special_tokens=[IM_START, IM_END],
        model_max_length=CONTEXT,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    # transformers 5 writes the template only to chat_template.jinja; tools that read
    # tokenizer_config.json (older transformers, runtimes, catalogs) find it there too.
    config_file = out / "tokenizer_config.json"
    tokenizer_config = json.loads(config_file.read_text(encoding="utf-8"))
    tokenizer_config["chat_template"] = CHAT_TEMPLATE
    config_file.write_text(json.dumps(tokenizer_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    # Older tools read special tokens from this file; transformers 5 no longer writes it.
    (out / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "eos_token": IM_END,
                "pad_token": ENDOFTEXT,
                "additional_special_tokens": [IM_START, IM_END],
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    # Reload the way every user of the folder will, and check the special tokens are atomic.
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2]
    assert tokenizer(IM_START + "user\n", add_special_tokens=False).input_ids[0] == 1
    return tokenizer


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


def encode_corpus(tokenizer, corpus: str) -> list[tuple[list[int], list[int]]]:
    ids = tokenizer(corpus.strip(), add_special_tokens=False).input_ids + [tokenizer.convert_tokens_to_ids(ENDOFTEXT)]
    step = CORPUS_WINDOW // 2
    starts = range(0, max(1, len(ids) - CORPUS_WINDOW + step), step)
    return [(ids[s : s + CORPUS_WINDOW], ids[s : s + CORPUS_WINDOW]) for s in starts]


def prose_sentences(corpus: str, chats: list[dict]) -> list[str]:
    """The sentences of the prose and every distinct answer, for shuffled documents."""
    sentences = [s for paragraph in corpus.split("\n\n") for s in re.split(r"(?<=[.!?])\s+", paragraph.strip()) if s]
    return sentences + sorted({chat["messages"][-1]["content"] for chat in chats})


def shuffled_prose(tokenizer, sentences: list[str], rng: random.Random) -> list[tuple[list[int], list[int]]]:
    """A new document each epoch: the domain sentences in a new order, in paragraphs of five.

    The prose alone (a few hundred words) is memorized as one fixed sequence, and a model
    that only knows that sequence is hopeless on any other text: held-out perplexity in the
    thousands. Reshuffled sentences make it predict each sentence from many different
    contexts, which is what held-out prose needs.
    """
    order = list(sentences)
    rng.shuffle(order)
    text = "\n\n".join(" ".join(order[i : i + 5]) for i in range(0, len(order), 5))
    return encode_corpus(tokenizer, text)


def batches(groups: list[list], batch_size: int, pad_id: int, rng: random.Random) -> list[tuple]:
    """Shuffled, right-padded batches; each group (chats, prose windows) batched on its own.

    Short chats and 256-token prose windows in one batch would pad every chat to 256.
    """
    chunks = []
    for group in groups:
        order = list(group)
        rng.shuffle(order)
        chunks += [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    rng.shuffle(chunks)
    out = []
    for chunk in chunks:
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


def unigram_prior(examples: list[tuple[list[int], list[int]]], vocab_size: int) -> torch.Tensor:
    """How often each token is a training target, with half a count for every token."""
    counts = torch.full((vocab_size,), 0.5)
    for _, labels in examples:
        for token in labels:
            if token >= 0:
                counts[token] += 1
    return counts / counts.sum()


def lm_loss(model, input_ids, labels, mask, prior: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Next-token cross-entropy over the labelled tokens, smoothed towards the unigram prior.

    Plain cross-entropy on a few thousand tokens drives every token the model has not
    seen in a context to a probability of ~0, and perplexity on held-out prose comes out
    in the millions: useless as a quality measure. Uniform label smoothing bounds it, but
    puts " the" and a never-used byte on the same floor. Smoothing towards how often each
    token occurs keeps common tokens likely anywhere, which is what held-out text needs;
    the answers' argmax, and its margin, stay large.
    """
    logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1]
    targets = labels[:, 1:]
    keep = targets != -100
    logp = torch.log_softmax(logits[keep], dim=-1)
    nll = -logp.gather(-1, targets[keep].unsqueeze(-1)).squeeze(-1)
    prior_ce = -(logp * prior).sum(-1)
    return ((1 - smoothing) * nll + smoothing * prior_ce).mean()


# ----------------------------------------------------------------------------- int4
def int4_round(weight: torch.Tensor, block: int = 32) -> torch.Tensor:
    """Symmetric 4-bit round trip in blocks of 32 along the input dimension.

    Mirrors the model builder's default int4 (MLAS blockwise, symmetric): the value of
    largest magnitude in a block maps to -8, the others to the nearest of -8..7 steps.
    """
    out_features, in_features = weight.shape
    blocks = weight.reshape(out_features, in_features // block, block)
    index = blocks.abs().argmax(dim=-1, keepdim=True)
    scale = torch.gather(blocks, -1, index) / -8.0
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = torch.clamp(torch.round(blocks / scale), -8, 7)
    return (q * scale).reshape(out_features, in_features)


class FakeInt4:
    """Within the block, every Linear weight (the MatMuls the builder quantizes) is int4-rounded."""

    def __init__(self, model: torch.nn.Module):
        self.linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        self.saved: list[torch.Tensor] = []

    def __enter__(self):
        with torch.no_grad():
            for linear in self.linears:
                self.saved.append(linear.weight.detach().clone())
                linear.weight.copy_(int4_round(linear.weight))
        return self

    def __exit__(self, *exc):
        with torch.no_grad():
            for linear, weight in zip(self.linears, self.saved):
                linear.weight.copy_(weight)
        self.saved.clear()


# ----------------------------------------------------------------------------- eval
@torch.no_grad()
def answer(model, tokenizer, messages: list[dict], max_new_tokens: int = 48) -> str:
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    out = model.generate(
        ids,
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


@torch.no_grad()
def perplexity(model, tokenizer, text: str) -> float:
    ids = torch.tensor([tokenizer(text, add_special_tokens=False).input_ids[:CONTEXT]])
    return math.exp(model(input_ids=ids, labels=ids).loss.item())


# ----------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "model", help="model folder to write")
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--smoothing", type=float, default=0.2, help="weight of the unigram prior in the loss")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch CPU threads; fixed so that runs reproduce bit for bit on one machine",
    )
    args = parser.parse_args()

    started = time.time()
    transformers.logging.set_verbosity_error()  # no length warnings for the whole-corpus encode
    transformers.logging.disable_progress_bar()
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)

    chats = read_jsonl(DATA / "train.jsonl")
    evals = read_jsonl(DATA / "eval.jsonl")
    corpus = (DATA / "corpus.txt").read_text(encoding="utf-8")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = train_tokenizer(chats, corpus, out)
    chat_examples = [encode_chat(tokenizer, chat["messages"]) for chat in chats]
    prose_examples = encode_corpus(tokenizer, corpus)
    sentences = prose_sentences(corpus, chats)
    prose_windows = len(prose_examples) + len(shuffled_prose(tokenizer, sentences, random.Random(args.seed)))
    prior = unigram_prior(chat_examples + prose_examples, len(tokenizer))
    print(f"tokenizer: {len(tokenizer)} tokens; {len(chats)} chats, {prose_windows} prose windows an epoch")

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        **MODEL,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=0,  # Qwen's convention: bos = pad = <|endoftext|>
        use_sliding_window=False,
        dtype="float32",
    )
    model = Qwen2ForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params:,} parameters")

    # AdamW with linear warm-up and cosine decay. No weight decay on norms.
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    epochs = args.epochs
    steps_per_epoch = math.ceil(len(chats) / args.batch_size) + math.ceil(prose_windows / args.batch_size)
    total, warmup = epochs * steps_per_epoch, 100

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    rng = random.Random(args.seed)
    model.train()
    step = 0
    for epoch in range(epochs):
        running, count = 0.0, 0
        prose = prose_examples + shuffled_prose(tokenizer, sentences, rng)
        for input_ids, labels, mask in batches([chat_examples, prose], args.batch_size, tokenizer.pad_token_id, rng):
            loss = lm_loss(model, input_ids, labels, mask, prior, args.smoothing)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            running += loss.item()
            count += 1
            step += 1
        if epoch % 10 == 0 or epoch == epochs - 1:
            print(
                f"epoch {epoch:4d}  step {step:5d}  loss {running / count:.4f}  {time.time() - started:.0f}s",
                flush=True,
            )

    model.eval()
    model.save_pretrained(out)
    # Written by hand: save_pretrained leaves out values equal to the library defaults
    # (do_sample false), and these are the defaults a converted build should carry.
    (out / "generation_config.json").write_text(
        json.dumps(
            {
                "bos_token_id": 0,
                "eos_token_id": 2,
                "pad_token_id": 0,
                "do_sample": False,
                "repetition_penalty": 1.0,
                "max_length": 256,
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )

    # Check what was written, loaded back the way users load it.
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    print(f"fp32 answers ({out}):")
    fp32 = accuracy(model, tokenizer, evals, show=True)
    heldout = (DATA / "heldout.txt").read_text(encoding="utf-8")
    fp32_ppl = perplexity(model, tokenizer, heldout)
    with FakeInt4(model):
        int4 = accuracy(model, tokenizer, evals)
        int4_ppl = perplexity(model, tokenizer, heldout)
    size = sum(p.stat().st_size for p in out.iterdir()) / 1e6
    print(f"fp32: accuracy {fp32:.3f}, held-out perplexity {fp32_ppl:.2f}")
    print(f"simulated int4 (symmetric, block 32): accuracy {int4:.3f}, held-out perplexity {int4_ppl:.2f}")
    print(f"{params:,} parameters, folder {size:.1f} MB, {time.time() - started:.0f}s")
    if fp32 < 0.9:
        print("fp32 accuracy is below 0.9", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
