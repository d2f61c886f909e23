"""Quality per byte on real text: slmk's builds against llama.cpp's quantizations, one perplexity protocol.

Prints figures (not a timed test) and writes them as JSON; docs/benchmarks.md has the results.

``train`` (once, deterministic with ``--seed``; minutes on 2 cores):
  1. Corpus: the Python standard library's own source (``sysconfig.get_paths()["stdlib"]``,
     ``*.py`` outside test/, site-packages/, idlelib/, ...), available offline everywhere.
     Split by module name: a file is held out when the first byte of the SHA-256 of its
     relative path is below ``HELDOUT_SHARE * 256``; the held-out text is those files in path
     order, joined by a blank line, cut at ``--heldout-bytes``.
  2. Tokenizer: byte-level BPE (the ``tokenizers`` library; GPT-2's pre-tokenizer regex, which
     llama.cpp's ``gpt-2`` pre-tokenizer implements too) of ``--vocab`` entries, trained on the
     training files only; no BOS is added (``add_bos_token`` false on both sides).
  3. Model: a Llama (LlamaForCausalLM; every matrix dimension a multiple of 256, so Q4_K/Q5_K
     apply to every tensor) trained from scratch with AdamW on random windows of
     ``--seq`` tokens of the training files, saved as a Hugging Face folder (safetensors,
     tokenizer.json, a plain chat template so ``slmk convert`` can check the build).

``score`` (after ``train``):
  4. Builds: slmk fp32, int8, int4 RTN and k_quant (the builder's ``algo_config``) at block 32
     and 128, int4 with the embedding quantized, with the output layer at int8 (block 32, 64
     and 128; symmetric and not), the builder's int4/int8 mix, and an Olive GPTQ
     build unless ``--skip-gptq``; llama.cpp F32, Q8_0, Q5_K_M, Q4_K_M, Q4_0 (convert_hf_to_gguf.py
     + llama-quantize of the llama-cpp-python 0.3.36 sdist, built by benchmarks/peer_llamacpp.py).
  5. One protocol, llama-perplexity's: the head of the held-out text (``--heldout-bytes``, 640,000:
     173,667 tokens with the default tokenizer, 86,106 of them scored at ``--ctx`` 256; a work
     folder whose training run wrote less is extended from the same split) is tokenized
     once; non-overlapping
     windows of ``--ctx`` tokens; in each window the second half is scored (the logits at
     positions ctx/2 .. ctx-2 predict tokens ctx/2+1 .. ctx-1). llama.cpp: llama-perplexity
     itself, on the same text (its tokenization is checked to be the tokenizers' one first).
     slmk: its runtime's teacher-forced ``logits()`` (the ortgenai ScoringSession the
     conversion check uses) on the same windows.
  6. Table (build, file MiB, bits per weight of the quantized matrices, ppl, change vs fp32 and vs
     Q4_K_M) and a size-vs-perplexity SVG. Each change is paired window by window (llama.cpp's
     per-chunk losses follow from the running estimates llama-perplexity prints), with its standard
     error: the text's difficulty, shared by both builds, cancels. Windows of one module are not
     independent samples, so that error understates the real one; the change in each quarter of
     the text shows whether it holds (on the 17.8 M model it often does not below about 0.3 %).
  7. The KL divergence of each build's next-token distribution from fp32's, at every scored
     position (it cannot go below zero, so it ranks builds perplexity cannot): fp32's log-
     probabilities kept in WORK/fp32-logprobs.npy, llama.cpp's read from llama-perplexity's
     ``--kl-divergence-base`` file (both sides rounded to its 16 bits), checked against
     ``llama-perplexity --kl-divergence``'s own mean for Q4_K_M; a second table and ``--kl-svg``.

Usage:
  nice -n 10 .venv/bin/python benchmarks/quality_per_byte.py train [--work out/qpb] [--steps N]
  nice -n 10 .venv/bin/python benchmarks/quality_per_byte.py score [--work out/qpb] [--svg docs/x.svg]
      [--kl-svg docs/y.svg]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_WORK = REPO / "out" / "quality-per-byte"  # /out/ is git-ignored
HELDOUT_SHARE = 0.06
#: Folders of the standard library that are not its source proper (tests, vendored data, the IDE,
#: codec tables that are mostly hex literals).
SKIPPED_PARTS = {
    "test",
    "tests",
    "site-packages",
    "idlelib",
    "lib2to3",
    "turtledemo",
    "__pycache__",
    "ensurepip",
    "encodings",
}
END_OF_TEXT = "<|endoftext|>"
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --------------------------------------------------------------------------- corpus
def stdlib_files() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(training files, held-out files) as (relative path, text), in path order."""
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    train, heldout = [], []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if SKIPPED_PARTS & set(relative.split("/")[:-1]) or relative.startswith("test_"):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if not text.strip():
            continue
        digest = hashlib.sha256(relative.encode()).digest()[0]
        (heldout if digest < HELDOUT_SHARE * 256 else train).append((relative, text))
    return train, heldout


def train_tokenizer(texts: list[str], vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def model_config(vocab: int, args: argparse.Namespace):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=args.hidden // 64,
        max_position_embeddings=args.ctx_max,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
        torch_dtype="float32",
    )


def train(args: argparse.Namespace) -> None:
    import numpy as np
    import torch
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started, load_before = time.perf_counter(), load_average()
    train_files, heldout_files = stdlib_files()
    heldout_text = "\n\n".join(text for _, text in heldout_files)[: args.heldout_bytes]
    (work / "heldout.txt").write_text(heldout_text, encoding="utf-8")
    texts = [text for _, text in train_files]
    tokenizer = train_tokenizer(texts, args.vocab)
    end = tokenizer.token_to_id(END_OF_TEXT)
    ids = []
    for encoding in tokenizer.encode_batch(texts):
        ids.extend(encoding.ids)
        ids.append(end)
    data = np.asarray(ids, dtype=np.int64)
    heldout_tokens = len(tokenizer.encode(heldout_text).ids)
    print(
        f"corpus: {len(train_files)} training files ({len(data):,} tokens), {len(heldout_files)} held out "
        f"({heldout_tokens:,} tokens in {len(heldout_text):,} bytes); tokenizer {tokenizer.get_vocab_size()} entries"
    )

    config = model_config(tokenizer.get_vocab_size(), args)
    model = LlamaForCausalLM(config)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"model: Llama, {parameters / 1e6:.1f} M parameters; {args.steps} steps of {args.batch} x {args.seq} tokens")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, args.steps // 20)

    def rate(step: int) -> float:  # linear warm-up, then cosine to a tenth
        import math

        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, args.steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    rng = np.random.default_rng(args.seed)
    model.train()
    for step in range(args.steps):
        starts = rng.integers(0, len(data) - args.seq - 1, size=args.batch)
        batch = torch.from_numpy(np.stack([data[s : s + args.seq] for s in starts]))
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 20 == 0 or step == args.steps - 1:
            seconds = time.perf_counter() - started
            print(f"step {step:5d}  loss {loss.item():.3f}  {seconds:6.0f} s  load {load_average()}", flush=True)

    model_dir = work / "model"
    tmp = work / "model.tmp"
    model.eval()
    model.save_pretrained(tmp, safe_serialization=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT, unk_token=None
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(tmp)
    settings = json.loads((tmp / "tokenizer_config.json").read_text())
    settings.update(add_bos_token=False, add_eos_token=False)  # read by convert_hf_to_gguf.py too
    (tmp / "tokenizer_config.json").write_text(json.dumps(settings, indent=2))
    if model_dir.exists():
        import shutil

        shutil.rmtree(model_dir)
    os.replace(tmp, model_dir)
    summary = {
        "parameters": parameters,
        "train_tokens": len(data),
        "heldout_tokens": heldout_tokens,
        "steps": args.steps,
        "tokens_seen": args.steps * args.batch * args.seq,
        "final_loss": loss.item(),
        "seconds": time.perf_counter() - started,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "args": vars(args),
    }
    (work / "train.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


# --------------------------------------------------------------------------- builds
#: slmk builds: name -> (precision, builder options). Every matrix (lm_head included) is quantized;
#: "+emb" quantizes the embedding table too (op_types_to_quantize=MatMul/Gather, given explicitly: slmk's int4
#: and int8 do it by default on CPU with the default algorithm; rtn and k_quant keep the table fp32). int8 is
#: at block 128 by default ("float emb b32": the int8 build as it was, op_types_to_quantize=MatMul at block 32).
#: slmk's default int4 is the builder's "default" algorithm: RTN at block 32. "mixed" is the builder's
#: matmul_mixed_precision=last_matmul:int8,mixed_layers:int8: lm_head and the layers llama.cpp's _M
#: mixes keep at higher precision go int8, as Q4_K_M gives them Q6_K.
SLMK_BUILDS: dict[str, tuple[str, dict]] = {
    "fp32": ("fp32", {}),
    "int8": ("int8", {}),  # block 128 by default
    "int8 b32": ("int8", {"block_size": 32}),
    "int8 b64": ("int8", {"block_size": 64}),
    "int8 float emb b32": ("int8", {"op_types_to_quantize": "MatMul", "block_size": 32}),
    "int4 rtn b32": ("int4", {"algorithm": "rtn", "block_size": 32}),
    "int4 mixed +emb": (
        "int4",
        {"matmul_mixed_precision": "last_matmul:int8,mixed_layers:int8", "op_types_to_quantize": "MatMul/Gather"},
    ),
    # the output layer at int8, the rest at int4: what Q4_0 does with its output layer (Q6_K)
    "int4 lm_head int8 +emb": (
        "int4",
        {"matmul_mixed_precision": "last_matmul:int8", "op_types_to_quantize": "MatMul/Gather"},
    ),
    "int4 asym +emb": ("int4", {"is_symmetric": False, "op_types_to_quantize": "MatMul/Gather"}),
    "int4 asym lm_head int8 +emb": (
        "int4",
        {"is_symmetric": False, "matmul_mixed_precision": "last_matmul:int8", "op_types_to_quantize": "MatMul/Gather"},
    ),
    # the closest slmk build to Q4_K_M's bytes: block 64 (4.5 bits a weight with its fp32 scales, as
    # Q4_K's) and the output layer at int8, the one mix that paid on this model
    "int4 b64 lm_head int8 +emb": (
        "int4",
        {"block_size": 64, "matmul_mixed_precision": "last_matmul:int8", "op_types_to_quantize": "MatMul/Gather"},
    ),
    "int4 b128 lm_head int8 +emb": (
        "int4",
        {"block_size": 128, "matmul_mixed_precision": "last_matmul:int8", "op_types_to_quantize": "MatMul/Gather"},
    ),
    "int4 k_quant b32": ("int4", {"algorithm": "k_quant", "block_size": 32}),
    # the builder's k_quant (asymmetric, scales and minimums searched) with the output layer at int8, as
    # llama.cpp keeps it at 6 bits: by KL the two levers that paid most on this model (k_quant keeps the
    # embedding table in float: the builder quantizes a Gather with its default method only)
    "int4 k_quant b32 lm_head int8": (
        "int4",
        {"algorithm": "k_quant", "block_size": 32, "matmul_mixed_precision": "last_matmul:int8"},
    ),
    "int4 k_quant b64 lm_head int8": (
        "int4",
        {"algorithm": "k_quant", "block_size": 64, "matmul_mixed_precision": "last_matmul:int8"},
    ),
    "int4 default b32 +emb": ("int4", {"op_types_to_quantize": "MatMul/Gather"}),
    "int4 rtn b128": ("int4", {"algorithm": "rtn", "block_size": 128}),
    "int4 default b64 +emb": ("int4", {"block_size": 64, "op_types_to_quantize": "MatMul/Gather"}),
    "int4 default b128 +emb": ("int4", {"block_size": 128, "op_types_to_quantize": "MatMul/Gather"}),
    "int4 k_quant b128": ("int4", {"algorithm": "k_quant", "block_size": 128}),
}
#: The llama.cpp build every row is also compared with, window by window: the issue's int4 target.
PAIRED_PEER = "Q4_K_M"
#: Quantized builds keep every position's logits (prune_lm_head off) so a window is scored in one call
#: rather than one call per token; the weights, and so the file size, are the same.
SCORING_OPTIONS = {"prune_lm_head": False}
#: llama.cpp files: name -> llama-quantize type (None: written by convert_hf_to_gguf.py itself).
GGUF_BUILDS: dict[str, str | None] = {
    "F32": None,
    "Q8_0": "Q8_0",
    "Q5_K_M": "Q5_K_M",
    "Q4_K_M": "Q4_K_M",
    "Q4_0": "Q4_0",
}
#: convert_hf_to_gguf.py of the vendored source, patched for this model's tokenizer: the converter
#: recognises a BPE pre-tokenizer by hashing how a test string tokenizes, and no stock hash matches a
#: freshly trained vocabulary, though its pre-tokenizer is GPT-2's regex exactly (llama.cpp's "gpt-2");
#: and LlamaModel tries sentencepiece first, which this byte-level BPE vocabulary is not.
LLAMA_CONVERT_WRAPPER_ARGS = ("llama", "LlamaModel", "gpt-2")


def slug(name: str) -> str:
    return name.replace(" ", "-").replace("+", "plus-")


def model_bytes(path: Path) -> int:
    """Bytes of the weights file(s): a GGUF file (which also holds its vocabulary), or an ONNX build's
    model.onnx + model.onnx.data (tokenizer and configs left out)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.iterdir() if p.name.endswith((".onnx", ".onnx.data")))


def build_slmk(model: Path, work: Path, name: str, log: Path) -> Path:
    from peer_llamacpp import convert_slmk

    out = work / "slmk" / slug(name)
    if not (out / "genai_config.json").is_file():
        precision, options = SLMK_BUILDS[name]
        options = {**options, **SCORING_OPTIONS} if precision != "fp32" else options
        started, load = time.perf_counter(), load_average()
        # No check against the source: this model's perplexity is what is measured, and the check
        # would import transformers for every build on a machine shared by six.
        convert_slmk(model, out, precision, work, options, verify=False)
        print(f"  built {name}: {time.perf_counter() - started:.0f} s (load {load})", flush=True)
    return out


def build_gptq(model: Path, work: Path, calibration: Path) -> tuple[Path | None, str | None]:
    """Olive GPTQ (int4, calibrated on training text) through `slmk convert`; (build, why not)."""
    import subprocess

    out = work / "slmk" / "int4-gptq"
    if (out / "genai_config.json").is_file():
        return out, None
    slmk = Path(sys.executable).with_name("slmk")
    cmd = [str(slmk), "convert", str(model), "-p", "int4", "--algorithm", "gptq", "--calibration", str(calibration)]
    cmd += ["-o", str(out), "--force", "--no-verify"]
    started, load = time.perf_counter(), load_average()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        return None, " / ".join(lines[-3:]) or f"exit {done.returncode}"
    print(f"  built int4 gptq: {time.perf_counter() - started:.0f} s (load {load})", flush=True)
    return out, None


def build_gguf(model: Path, work: Path, name: str, binaries: Path, source: Path, threads: int) -> Path:
    from peer_llamacpp import convert_gguf, convert_wrapper, quantize_gguf

    out = work / "gguf" / f"{name}.gguf"
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.is_file():
        return out
    kind = GGUF_BUILDS[name]
    if kind is None:
        convert_gguf(model, out, source, name.lower(), work, wrapper=convert_wrapper(*LLAMA_CONVERT_WRAPPER_ARGS))
    else:  # quantized from the F32 file, never from F16, so only one rounding happens
        base = build_gguf(model, work, "F32", binaries, source, threads)
        quantize_gguf(binaries, base, out, kind, threads, work, pure=False)
    return out


# --------------------------------------------------------------------------- perplexity
def windows(ids: list[int], ctx: int) -> list[list[int]]:
    return [ids[start : start + ctx] for start in range(0, len(ids) - ctx + 1, ctx)]


def log_softmax(rows):
    import numpy as np

    rows = np.asarray(rows, dtype=np.float64)
    peak = rows.max(axis=-1, keepdims=True)
    return rows - (np.log(np.exp(rows - peak).sum(axis=-1, keepdims=True)) + peak)


class Divergence:
    """KL(fp32 || build) at every scored position, gathered window by window.

    Perplexity only looks at the probability of the token that came; on text where the model is
    over-confident, rounding noise can lower it (docs/benchmarks.md). The KL divergence from fp32's
    whole next-token distribution cannot go below zero, so it ranks builds whose perplexities differ
    by less than the text's own noise. The same quantity as llama-perplexity's ``--kl-divergence``,
    here measured from one reference, slmk's fp32 build, for both sides, each build's
    log-probabilities stored at 16 bits as llama-perplexity stores them (stored_as_llama)."""

    def __init__(self) -> None:
        self.window_kl: list[float] = []  # each window's summed KL (nats): paired like window_nll
        self.per_token: list = []
        self.same_top = 0

    def add(self, reference, logprobs) -> None:
        import numpy as np

        reference = np.asarray(reference, dtype=np.float64)
        kl = (np.exp(reference) * (reference - logprobs)).sum(axis=-1)
        self.window_kl.append(float(kl.sum()))
        self.per_token.append(kl.astype(np.float32))
        self.same_top += int((reference.argmax(axis=-1) == logprobs.argmax(axis=-1)).sum())

    def result(self) -> dict:
        import numpy as np

        tokens = np.concatenate(self.per_token)
        return {
            "kl": float(tokens.mean()),
            "kl_p99": float(np.percentile(tokens, 99)),
            "kl_max": float(tokens.max()),
            "same_top": self.same_top / len(tokens),
            "window_kl": self.window_kl,
        }


def stored_as_llama(logprobs):
    """``logprobs`` as llama-perplexity stores them (16 bits over the 16 nats below the top, each row
    renormalised as llama_divergence reads them): slmk's builds are scored through the same rounding
    as llama.cpp's, whose floor, fp32 against itself, is about 1e-5 nats a token."""
    import numpy as np

    top = logprobs.max(axis=-1, keepdims=True)
    low = np.maximum(logprobs.min(axis=-1, keepdims=True), top - 16)
    scale = (top - low) / 65535
    steps = np.where(logprobs > low, np.rint((logprobs - low) / scale), 0)
    return log_softmax(steps * scale + low)


def open_reference(path: Path, shape: tuple[int, ...], write: bool):
    """fp32's log-probabilities at every scored position (float32, windows x positions x words: 1.4 GB
    for the default protocol), written when fp32 is scored and read for every other build."""
    import numpy as np

    if write:
        return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    reference = np.load(path, mmap_mode="r")
    if reference.shape != shape:
        raise SystemExit(f"{path} holds {reference.shape}, this protocol needs {shape}: score fp32 again")
    return reference


def slmk_perplexity(build: Path, ids: list[int], text: str, ctx: int, reference=None, write: bool = False) -> dict:
    """llama-perplexity's protocol through slmk's runtime (the ortgenai ScoringSession's logits());
    with ``reference``, also the divergence from it (or, with ``write``, this build's log-probabilities
    written into it)."""
    import math

    import numpy as np

    from slmk.api.operations import open_session

    first = ctx // 2
    divergence = Divergence()
    with open_session(build, runtime="ortgenai") as session:
        if list(session.encode(text)) != ids:
            raise SystemExit(f"{build}: slmk's runtime tokenizes the held-out text differently")
        window_nll: list[float] = []
        count = 0
        for index, window in enumerate(windows(ids, ctx)):
            # row r predicts the token after position first + r; the last row predicts past the window
            logprobs = log_softmax(session.logits(window, start=first)[:-1])
            targets = np.asarray(window[first + 1 :])
            window_nll.append(float(-logprobs[np.arange(len(targets)), targets].sum()))
            count += len(targets)
            if reference is not None and write:
                reference[index] = logprobs
                divergence.add(logprobs, stored_as_llama(logprobs))  # the floor
            elif reference is not None:
                divergence.add(reference[index], stored_as_llama(logprobs))
    ppl = math.exp(sum(window_nll) / count)
    measured = {"ppl": ppl, "scored": count, "windows": len(window_nll), "window_nll": window_nll}
    if reference is not None and write:
        reference.flush()
    if reference is not None:
        measured.update(divergence.result())
    return measured


def llama_divergence(logits_file: Path, ids: list[int], ctx: int, reference) -> dict:
    """The divergence from ``reference`` of a GGUF build, read from the log-probabilities
    llama-perplexity wrote (``--kl-divergence-base``; tools/perplexity/perplexity.cpp): "_logits_",
    int32 n_ctx, n_vocab, n_chunk, the n_chunk * n_ctx token ids, then for each chunk and scored
    position (scale, min) as two float32 and n_vocab (rounded up to even) uint16 q, the log-probability
    being scale * q + min; words more than 16 nats below the top are stored as min. 16 bits over
    16 nats: 2.4e-4 nats a step; the rows are renormalised, so the clamped tail adds no mass."""
    import numpy as np

    with logits_file.open("rb") as stream:
        if stream.read(8) != b"_logits_":
            raise SystemExit(f"{logits_file}: not a llama-perplexity log-probability file")
        n_ctx, n_vocab, n_chunk = np.frombuffer(stream.read(12), dtype="<i4")
        tokens = np.frombuffer(stream.read(4 * n_chunk * n_ctx), dtype="<i4")
        if n_ctx != ctx or tokens.tolist() != ids[: n_chunk * ctx]:
            raise SystemExit(f"{logits_file}: other windows than slmk's (n_ctx {n_ctx}, tokens differ)")
        scored, width = scored_per_window(ctx), 2 * ((n_vocab + 1) // 2) + 4
        divergence = Divergence()
        for index in range(n_chunk):
            block = np.frombuffer(stream.read(2 * scored * width), dtype="<u2").reshape(scored, width)
            scale_min = block[:, :4].copy().view("<f4")
            logprobs = block[:, 4 : 4 + n_vocab] * scale_min[:, :1].astype(np.float64) + scale_min[:, 1:2]
            divergence.add(reference[index], log_softmax(logprobs))
    return divergence.result()


def scored_per_window(ctx: int) -> int:
    """Tokens scored in each window: those after its first half, but the last position's prediction."""
    return ctx - ctx // 2 - 1


def chunk_losses(running: list[float], scored_per_chunk: int) -> list[float]:
    """Each chunk's summed loss from llama-perplexity's running estimates (``[i]`` = exp(loss of
    chunks 1..i / tokens scored in them)). Printed to 4 decimals: at chunk 177 of a ppl near 52 that
    is about 2e-4 nats a token, against a spread of about 1e-2 between builds' windows."""
    import math

    totals = [i * scored_per_chunk * math.log(p) for i, p in enumerate(running, 1)]
    return [b - a for a, b in zip([0.0, *totals], totals)]


def mean_difference(reference: list[float], other: list[float], scored_per_window: int) -> tuple[float, float]:
    """(mean difference a token, its standard error) of ``other`` against ``reference``, from each
    window's summed figure (loss or KL): each window's difference is one sample, so the text's own
    difficulty, which both builds share, cancels out."""
    import math
    import statistics

    diffs = [(b - a) / scored_per_window for a, b in zip(reference, other, strict=True)]
    return statistics.fmean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs))


def paired(reference: list[float], other: list[float], scored_per_window: int) -> tuple[float, float]:
    """(perplexity change, its standard error), both relative, of ``other`` against ``reference``
    on the same windows (mean_difference of their losses)."""
    import math

    mean, error = mean_difference(reference, other, scored_per_window)
    return math.expm1(mean), error


def llama_own_kl(binaries: Path, gguf: Path, base: Path, text_file: Path, args: argparse.Namespace) -> float:
    """llama-perplexity --kl-divergence: its mean KL of ``gguf`` from the file ``base`` holds."""
    import re

    from peer_llamacpp import run_measured

    cmd = [str(binaries / "llama-perplexity"), "-m", str(gguf), "-f", str(text_file), "-c", str(args.ctx)]
    cmd += ["-b", str(args.ctx), "-t", str(args.threads), "--no-escape", "--kl-divergence-base", str(base)]
    cmd.append("--kl-divergence")
    log = Path(args.work) / "score.log"
    printed = run_measured(cmd, log=log)["stdout"] + log.read_text(errors="replace")
    return float(re.findall(r"Mean\s+KLD:\s+([0-9.]+)", printed)[-1])


def llama_token_ids(binaries: Path, gguf: Path, text_file: Path) -> list[int]:
    import subprocess

    cmd = [str(binaries / "llama-tokenize"), "-m", str(gguf), "-f", str(text_file), "--ids", "--log-disable"]
    cmd.append("--no-escape")  # as llama-perplexity is run: the file's backslashes stay text
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def bits_per_weight(size: int, parameters: int) -> float:
    return size * 8 / parameters


def score(args: argparse.Namespace) -> None:
    from peer_llamacpp import LLAMA_TARGETS, find_or_build_llama, machine, ppl_llama
    from tokenizers import Tokenizer

    work = Path(args.work)
    model = work / "model"
    if not (model / "model.safetensors").is_file():
        raise SystemExit(f"no trained model in {model}: run `{Path(__file__).name} train` first")
    # the scored text: the head of the held-out files (--heldout-bytes), the same file for both sides
    text = (work / "heldout.txt").read_text(encoding="utf-8")
    if len(text) < args.heldout_bytes:  # train wrote less: the same split gives more, if it is the same split
        _, heldout_files = stdlib_files()
        longer = "\n\n".join(t for _, t in heldout_files)
        if not longer.startswith(text):
            raise SystemExit("this Python's standard library splits differently from the training run's")
        text = longer
    text = text[: args.heldout_bytes]
    text_file = work / "heldout-scored.txt"
    text_file.write_text(text, encoding="utf-8")
    ids = Tokenizer.from_file(str(model / "tokenizer.json")).encode(text).ids
    trained = json.loads((work / "train.json").read_text())
    parameters = trained["parameters"]
    log = work / "score.log"
    binaries, source = find_or_build_llama(Path(args.llama_dir), log, (*LLAMA_TARGETS, "llama-tokenize"))
    report = {"machine": machine(args.threads), "ctx": args.ctx, "heldout_tokens": len(ids), "train": trained}
    rows: list[dict] = report.setdefault("rows", [])

    scored = scored_per_window(args.ctx)
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    reference_file = work / "fp32-logprobs.npy"
    reference_shape = (len(windows(ids, args.ctx)), scored, vocab)

    def add(side: str, name: str, size: int, measured: dict, started: float, load: str) -> None:
        seconds = time.perf_counter() - started
        print(f"  {side} {name}: ppl {measured['ppl']:.4f} ({seconds:.0f} s, load {load})", flush=True)
        rows.append({"side": side, "build": name, "bytes": size, "seconds": seconds, "load": load, **measured})
        reference = next((r for r in rows if r["build"] == "fp32"), None)
        peer = next((r for r in rows if r["build"] == PAIRED_PEER), None)
        for row in rows:
            row["bits_per_weight"] = bits_per_weight(row["bytes"], parameters)
            row["delta"] = row["ppl"] / reference["ppl"] - 1 if reference else None
            for key, other in (("", reference), (f"_vs_{PAIRED_PEER}", peer)):
                if other is not None and len(row.get("window_nll", ())) == len(other.get("window_nll", ())) > 1:
                    change, error = paired(other["window_nll"], row["window_nll"], scored)
                    row[f"paired_delta{key}"], row[f"paired_se{key}"] = change, error
            if peer is not None and len(row.get("window_kl", ())) == len(peer.get("window_kl", ())) > 1:
                row[f"kl_vs_{PAIRED_PEER}"], row[f"kl_se_vs_{PAIRED_PEER}"] = mean_difference(
                    peer["window_kl"], row["window_kl"], scored
                )
        if args.json:  # after every row: a run cut short keeps what it measured
            tmp = Path(args.json + ".tmp")
            tmp.write_text(json.dumps(report, indent=2))
            os.replace(tmp, args.json)

    ggufs = {name: build_gguf(model, work, name, binaries, source, args.threads) for name in GGUF_BUILDS}
    llama_ids = llama_token_ids(binaries, ggufs["F32"], text_file)
    report["same_token_ids"] = llama_ids == ids
    print(
        f"llama.cpp's tokenization of the scored text equals the tokenizers' one: {llama_ids == ids} "
        f"({len(llama_ids)} vs {len(ids)} tokens)"
    )
    if llama_ids != ids:
        raise SystemExit("token ids differ: the two perplexities would not be comparable")

    names = [n for n in SLMK_BUILDS if not args.only or n in args.only]
    for name in names[:1]:  # fp32 first: every delta and every divergence is against it
        build = build_slmk(model, work, name, log)
        started, load = time.perf_counter(), load_average()
        written = open_reference(reference_file, reference_shape, write=True)
        measured = slmk_perplexity(build, ids, text, args.ctx, written, write=True)
        del written
        add("slmk", name, model_bytes(build), measured, started, load)
    reference = open_reference(reference_file, reference_shape, write=False)
    for name, gguf in ggufs.items():
        started, load = time.perf_counter(), load_average()
        logits_file = gguf.with_suffix(".logprobs")
        measured = ppl_llama(binaries, gguf, text_file, args.ctx, args.threads, running=True, logits_file=logits_file)
        if measured["ppl"] != measured["ppl"]:  # nan: seen once for Q4_K_M, finite on the rerun
            print(f"  llama.cpp {name}: llama-perplexity printed nan; running it again", flush=True)
            again = ppl_llama(binaries, gguf, text_file, args.ctx, args.threads, running=True, logits_file=logits_file)
            measured = {**again, "note": "nan on the first run"}
        running = measured.pop("running")
        if len(running) == measured["chunks"] and all(p == p for p in running):
            measured["window_nll"] = chunk_losses(running, scored)
        measured.update(llama_divergence(logits_file, ids, args.ctx, reference))
        if name != "F32":  # 0.7 GB each; F32's is kept for llama.cpp's own reading below
            logits_file.unlink()
        add(
            "llama.cpp",
            name,
            gguf.stat().st_size,
            measured,
            started,
            load,
        )
    # The reader above, checked against llama.cpp's own: its KL divergence of PAIRED_PEER from F32
    # (the same windows; F32 and slmk's fp32 differ by -0.000 +- 0.001 % in perplexity).
    base = ggufs["F32"].with_suffix(".logprobs")
    own = llama_own_kl(binaries, ggufs[PAIRED_PEER], base, text_file, args)
    report["llama_own_kl"] = {"build": PAIRED_PEER, "kl": own}
    base.unlink()
    print(f"  llama.cpp's own KL of {PAIRED_PEER} from its F32: {report['llama_own_kl']['kl']:.6f}", flush=True)
    for name in names[1:]:
        build = build_slmk(model, work, name, log)
        started, load = time.perf_counter(), load_average()
        measured = slmk_perplexity(build, ids, text, args.ctx, reference)
        add("slmk", name, model_bytes(build), measured, started, load)
    if not args.skip_gptq:
        calibration = work / "calibration.txt"
        if not calibration.is_file():
            train_files, _ = stdlib_files()
            calibration.write_text("\n\n".join(t for _, t in train_files)[: args.calibration_bytes], encoding="utf-8")
        build, why_not = build_gptq(model, work, calibration)
        if build is None:
            report["gptq_not_measured"] = why_not
            print(f"  int4 gptq: not built: {why_not}")
        else:
            started, load = time.perf_counter(), load_average()
            add(
                "slmk",
                "int4 gptq (Olive)",
                model_bytes(build),
                slmk_perplexity(build, ids, text, args.ctx, reference),
                started,
                load,
            )
    print_table(report)
    if args.svg:
        write_svg(rows, Path(args.svg), parameters)
    if args.kl_svg:
        write_svg(rows, Path(args.kl_svg), parameters, key="kl")


def print_table(report: dict) -> None:
    print(
        f"\nheld-out: {report['heldout_tokens']:,} tokens, windows of {report['ctx']}, second half scored; "
        f"load average {report['machine']['load_average']}"
    )
    print(
        "(+- : the standard error of the change, paired window by window over the same "
        f"{report['heldout_tokens']:,} tokens; windows of one module are not independent, so it "
        "understates: a change that differs in sign between quarters is not established)"
    )

    def change(row: dict, key: str) -> str:
        if f"paired_delta{key}" not in row:
            return "-"
        return f"{row[f'paired_delta{key}'] * 100:+.3f} +- {row[f'paired_se{key}'] * 100:.3f} %"

    reference = next((r for r in report["rows"] if r["build"] == "fp32"), {})
    scored = scored_per_window(report["ctx"])

    def by_quarter(row: dict) -> str:
        """The change against fp32 in each quarter of the text: whether it holds across the text."""
        ours, theirs = row.get("window_nll", []), reference.get("window_nll", [])
        if row is reference or len(ours) != len(theirs) or len(ours) < 8:
            return "-"
        size = len(ours) // 4
        quarters = [slice(i * size, (i + 1) * size) for i in range(4)]
        return " / ".join(f"{paired(theirs[q], ours[q], scored)[0] * 100:+.2f}" for q in quarters)

    print(f"| side | build | file MiB | bits/weight | ppl | vs slmk fp32 | vs {PAIRED_PEER} | vs fp32 by quarter, % |")
    print("|---|---|---|---|---|---|---|---|")
    for row in sorted(report["rows"], key=lambda r: -r["bytes"]):
        print(
            f"| {row['side']} | {row['build']} | {row['bytes'] / 2**20:.2f} | {row['bits_per_weight']:.2f} | "
            f"{row['ppl']:.3f} | {change(row, '')} | {change(row, f'_vs_{PAIRED_PEER}')} | {by_quarter(row)} |"
        )
    if any("kl" in row for row in report["rows"]):
        print_divergence_table(report)


def print_divergence_table(report: dict) -> None:
    import math
    import statistics

    scored = scored_per_window(report["ctx"])
    own = report.get("llama_own_kl")
    print(
        "\nKL divergence from slmk's fp32 next-token distribution, 10^-3 nats a token (+- : the standard "
        "error over windows; the difference to "
        f"{PAIRED_PEER} is paired window by window). same top: the share of positions whose most likely "
        "token is fp32's."
    )
    if own:
        peer = next((r for r in report["rows"] if r["build"] == own["build"]), {})
        print(
            f"check: llama-perplexity --kl-divergence reads {own['kl'] * 1e3:.4f} for {own['build']} from its F32, "
            f"this script {peer.get('kl', float('nan')) * 1e3:.4f} from slmk's fp32"
        )

    def quarters(row: dict) -> str:
        values = row["window_kl"]
        size = len(values) // 4
        return " / ".join(f"{sum(values[i * size : (i + 1) * size]) / (size * scored) * 1e3:.3f}" for i in range(4))

    print(f"| side | build | file MiB | KL | 99th pct | same top | by quarter | vs {PAIRED_PEER} |")
    print("|---|---|---|---|---|---|---|---|")
    for row in sorted((r for r in report["rows"] if "kl" in r), key=lambda r: -r["bytes"]):
        per_window = [v / scored for v in row["window_kl"]]
        error = statistics.stdev(per_window) / math.sqrt(len(per_window))
        versus = "-"
        if f"kl_vs_{PAIRED_PEER}" in row and row["build"] != PAIRED_PEER:
            versus = f"{row[f'kl_vs_{PAIRED_PEER}'] * 1e3:+.3f} +- {row[f'kl_se_vs_{PAIRED_PEER}'] * 1e3:.3f}"
        print(
            f"| {row['side']} | {row['build']} | {row['bytes'] / 2**20:.2f} | {row['kl'] * 1e3:.3f} +- "
            f"{error * 1e3:.3f} | {row['kl_p99'] * 1e3:.2f} | {row['same_top'] * 100:.2f} % | {quarters(row)} | "
            f"{versus} |"
        )


def write_svg(rows: list[dict], path: Path, parameters: int, key: str = "ppl") -> None:
    """Size (MiB) against perplexity (``key`` "ppl") or the KL divergence from fp32 ("kl", 10^-3 nats a
    token; fp32 itself, at zero, left out), one colour per side; a plain SVG (no plotting library)."""
    import math

    width, height, margin = 640, 400, 60
    rows = [r for r in rows if key in r and (key != "kl" or r["build"] not in ("fp32", "F32"))]
    xs = [r["bytes"] / 2**20 for r in rows]
    # KL spans orders of magnitude between 8 and 4 bits: its axis is logarithmic
    ys = [math.log10(r[key] * 1e3) if key == "kl" else r[key] for r in rows]
    x0, x1 = 0.0, max(xs) * 1.05
    y0, y1 = min(ys) - (max(ys) - min(ys)) * 0.08, max(ys) + (max(ys) - min(ys)) * 0.08

    def px(x: float) -> float:
        return margin + (x - x0) / (x1 - x0) * (width - 2 * margin)

    def py(y: float) -> float:
        return height - margin - (y - y0) / (y1 - y0) * (height - 2 * margin)

    colours = {"slmk": "#1f77b4", "llama.cpp": "#d62728"}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        'font-size="10">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<line x1="{margin}" y1="{height - margin}" x2="{width - margin}" y2="{height - margin}" stroke="black"/>',
        f'<line x1="{margin}" y1="{margin}" x2="{margin}" y2="{height - margin}" stroke="black"/>',
        f'<text x="{width / 2}" y="{height - 20}" text-anchor="middle">weights file, MiB '
        f"({parameters / 1e6:.1f} M parameters)</text>",
        f'<text x="15" y="{height / 2}" transform="rotate(-90 15 {height / 2})" text-anchor="middle">'
        f"{'KL divergence from fp32, 10^-3 nats a token' if key == 'kl' else 'held-out perplexity'}</text>",
    ]
    for step in range(6):
        x = x0 + (x1 - x0) * step / 5
        y = y0 + (y1 - y0) * step / 5
        parts.append(f'<text x="{px(x):.0f}" y="{height - margin + 14}" text-anchor="middle">{x:.1f}</text>')
        tick = f"{10**y:.3g}" if key == "kl" else f"{y:.2f}"
        parts.append(f'<text x="{margin - 5}" y="{py(y) + 3:.0f}" text-anchor="end">{tick}</text>')
    for row, x, y in zip(rows, xs, ys):
        colour = colours[row["side"]]
        parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{colour}"/>')
        parts.append(f'<text x="{px(x) + 5:.1f}" y="{py(y) - 4:.1f}" fill="{colour}">{row["build"]}</text>')
    for index, (side, colour) in enumerate(colours.items()):
        parts.append(f'<text x="{width - margin - 60}" y="{margin + 14 * index}" fill="{colour}">{side}</text>')
    parts.append("</svg>\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(parts))
    os.replace(tmp, path)


# --------------------------------------------------------------------------- command line
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train the benchmark model (deterministic with --seed)")
    p_train.add_argument("--work", default=str(DEFAULT_WORK))
    p_train.add_argument("--seed", type=int, default=0)
    p_train.add_argument("--threads", type=int, default=2)
    p_train.add_argument("--vocab", type=int, default=4096)
    p_train.add_argument("--hidden", type=int, default=512)
    p_train.add_argument("--intermediate", type=int, default=1536)
    p_train.add_argument("--layers", type=int, default=4)
    p_train.add_argument("--ctx-max", type=int, default=512)
    p_train.add_argument("--seq", type=int, default=256)
    p_train.add_argument("--batch", type=int, default=8)
    p_train.add_argument("--steps", type=int, default=1400)
    p_train.add_argument("--lr", type=float, default=2e-3)
    p_train.add_argument("--heldout-bytes", type=int, default=640_000)
    p_score = sub.add_parser("score", help="build every variant and score them with one protocol")
    p_score.add_argument("--work", default=str(DEFAULT_WORK))
    p_score.add_argument("--llama-dir", default=str(Path.home() / ".cache" / "slmk-peer"))
    p_score.add_argument("--threads", type=int, default=2)
    p_score.add_argument("--ctx", type=int, default=256)
    p_score.add_argument("--only", action="append", help="score only this slmk build (repeatable)")
    p_score.add_argument("--skip-gptq", action="store_true")
    p_score.add_argument("--calibration-bytes", type=int, default=200_000)
    p_score.add_argument(
        "--heldout-bytes",
        type=int,
        default=640_000,
        help="score the head of the held-out text (>= 20,000 tokens scored; more narrows the error)",
    )
    p_score.add_argument("--json")
    p_score.add_argument("--svg", help="size against perplexity")
    p_score.add_argument("--kl-svg", help="size against the KL divergence from fp32")
    p_table = sub.add_parser("table", help="print the table of a report score wrote (--json)")
    p_table.add_argument("report", type=Path)
    args = parser.parse_args()
    if args.command == "train":
        train(args)
    elif args.command == "table":
        print_table(json.loads(args.report.read_text()))
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))  # peer_llamacpp's functions
        score(args)


if __name__ == "__main__":
    sys.exit(main())
