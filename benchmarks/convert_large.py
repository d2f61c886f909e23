"""Conversion memory and time on a model larger than the machine's comfort: slmk against llama.cpp.

Prints figures and ratios (not a timed test), and writes them as JSON:

1. A random-weight model of a real shape is written shard by shard in bf16 safetensors
   (as such checkpoints are published), never held whole: the tensor names and shapes come
   from the architecture built on torch's meta device, each shard's tensors are drawn, saved
   and dropped. ``--shape phi4-mini``: Phi3ForCausalLM shaped as Phi-4-mini-instruct (3.8B
   parameters: hidden 3072, 32 layers, 24 heads, 8 KV heads, intermediate 8192, vocabulary
   200064, tied embeddings, longrope with partial rotary 0.75); ``--shape qwen2.5-1.5b``:
   Qwen2ForCausalLM shaped as Qwen2.5-1.5B. The tokenizer is the tiny chat model's (936
   entries; the model's vocabulary is larger, as when a tokenizer is padded), declared as
   GPT2Tokenizer so that llama.cpp's Phi-3 converter reads it as byte-level BPE.
2. slmk converts it (``slmk.api.operations.convert``, empty step cache, source check off: running the source
   in fp32 is a separate cost, see below) and llama.cpp converts it (convert_hf_to_gguf.py to
   f16, then llama-quantize), each step in its own process: wall time and peak RSS (wait4's
   ru_maxrss). llama.cpp's conversion peak is the larger of its two steps, its time their sum.
3. What slmk's source check would do on this machine is printed (it runs the source in fp32
   when the memory is there, else records "not verified" with the reason).

Reuses benchmarks/peer_llamacpp.py (llama.cpp build, measured children, the converter wrapper).
Needs disk for the checkpoint, the f16 GGUF and both outputs (3.8B: about 7.7 + 7.7 + 2.3 + 2.6 GB);
``--keep`` keeps them, by default the large files are deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_llamacpp import (
    ENV,
    TINY,
    convert_gguf,
    convert_slmk,
    find_or_build_llama,
    machine,
    mib,
    quantize_gguf,
    run_measured,
    size_of,
)

#: Shapes of published models (their config.json values; random weights here).
SHAPES = {
    "phi4-mini": {
        "architectures": ["Phi3ForCausalLM"],
        "model_type": "phi3",
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 32,
        "num_attention_heads": 24,
        "num_key_value_heads": 8,
        "vocab_size": 200064,
        "tie_word_embeddings": True,
        "hidden_act": "silu",
        "max_position_embeddings": 131072,
        "original_max_position_embeddings": 4096,
        "partial_rotary_factor": 0.75,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        # 48 = rotary dims / 2 (0.75 * 128 / 2); factors of 1: the shape, not the published values
        "rope_scaling": {"type": "longrope", "long_factor": [1.0] * 48, "short_factor": [1.0] * 48},
        "sliding_window": 262144,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attention_dropout": 0.0,
        "attention_bias": False,
        "initializer_range": 0.02,
        "use_cache": True,
    },
    "qwen2.5-1.5b": {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "use_sliding_window": False,
        "max_window_layers": 21,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
    },
}
#: Bytes per safetensors shard (published checkpoints use 2-5 GB).
SHARD_BYTES = 2 << 30
TOKENIZER_FILES = ("tokenizer.json", "special_tokens_map.json", "chat_template.jinja", "generation_config.json")


def tensor_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the checkpoint's tensors (the model built on the meta device: no memory)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_config = AutoConfig.for_model(config["model_type"], **{k: v for k, v in config.items() if k != "model_type"})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    return {
        name: tuple(t.shape)
        for name, t in model.state_dict().items()
        if not (config["tie_word_embeddings"] and name == "lm_head.weight")
    }


def write_sharded_model(folder: Path, shape: str, seed: int = 0) -> Path:
    """The ``shape`` model with random bf16 weights, written shard by shard (at most one shard in memory)."""
    import torch
    from safetensors.torch import save_file

    if (folder / "model.safetensors.index.json").is_file():
        return folder
    config = SHAPES[shape]
    shapes = tensor_shapes(config)
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    shards: list[list[str]] = [[]]
    size = 0
    for name, dims in shapes.items():
        nbytes = 2 * int(torch.Size(dims).numel())
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    weight_map, total = {}, 0
    for index, names in enumerate(shards, start=1):
        file = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name in names:
            dims = shapes[name]
            if name.endswith("norm.weight"):
                tensors[name] = torch.ones(dims, dtype=torch.bfloat16)
            else:
                tensors[name] = (torch.randn(dims, generator=generator) * 0.02).to(torch.bfloat16)
            weight_map[name] = file
            total += tensors[name].nbytes
        save_file(tensors, str(folder / (file + ".tmp")), metadata={"format": "pt"})
        os.replace(folder / (file + ".tmp"), folder / file)
        del tensors
        print(f"wrote {file} ({len(names)} tensors)", flush=True)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    tokenizer_config = json.loads((TINY / "model" / "tokenizer_config.json").read_text())
    tokenizer_config["tokenizer_class"] = "GPT2Tokenizer"  # byte-level BPE, as Phi-4-mini's (llama.cpp reads it so)
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    for name in TOKENIZER_FILES:
        if (TINY / "model" / name).is_file():
            shutil.copy(TINY / "model" / name, folder / name)
    (folder / "config.json").write_text(
        json.dumps(
            {**config, "torch_dtype": "bfloat16", "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 0}, indent=2
        )
    )
    return folder


def source_check(model: Path) -> str:
    """What slmk's source check would decide here (it runs the source in fp32 when memory allows)."""
    from slmk_verify.check import memory_shortfall

    from slmk.modelinfo import ModelInfo

    info = ModelInfo.load(model)
    reason = memory_shortfall(info)
    needed = (info.num_parameters or 0) * 4 / 2**30
    return f"not verified: {reason}" if reason else f"would run the source in fp32 (~{needed:.1f} GiB)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="phi4-mini")
    parser.add_argument("--work", type=Path, default=Path("/tmp") / "slmk-convert-large")
    parser.add_argument("--llama-dir", type=Path, default=Path.home() / ".cache" / "slmk-peer")
    parser.add_argument("--precisions", default="int4", help="comma-separated: int4 (vs Q4_0), int8 (vs Q8_0)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--skip-llama", action="store_true", help="slmk only (llama.cpp's figures from a last run)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint and the builds")
    parser.add_argument("--json", type=Path, default=None, help="where to write the report (default WORK/SHAPE.json)")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.update(ENV)
    report: dict = {"machine": machine(args.threads), "shape": args.shape, "rows": {}}
    model = work / f"{args.shape}-shaped"
    reused = (model / "model.safetensors.index.json").is_file()
    # Made in a child, so that this process stays small (a child's ru_maxrss starts from its parent's RSS).
    maker = "import sys; from pathlib import Path; from convert_large import write_sharded_model; "
    maker += "write_sharded_model(Path(sys.argv[1]), sys.argv[2])"
    made = run_measured(
        [sys.executable, "-c", maker, str(model), args.shape], env={"PYTHONPATH": str(Path(__file__).parent)}
    )
    report["checkpoint_bytes"] = sum(p.stat().st_size for p in model.glob("*.safetensors"))
    report["writer_peak_rss_bytes"] = None if reused else made["peak_rss_bytes"]
    report["source_check"] = source_check(model)
    written = "kept from a last run" if reused else f"written at {mib(made['peak_rss_bytes'])} MiB peak RSS"
    print(f"model: {model} ({mib(report['checkpoint_bytes'])} MiB of bf16 safetensors, {written})")
    print(f"slmk's source check: {report['source_check']}")
    builds = work / "builds"
    builds.mkdir(exist_ok=True)
    peers = {"int4": "Q4_0", "int8": "Q8_0"}
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    try:
        for precision in precisions:
            out = builds / f"slmk-{precision}"
            shutil.rmtree(out, ignore_errors=True)
            measured = convert_slmk(model, out, precision, work, verify=False)
            report["rows"][f"slmk {precision}"] = _row(measured, out)
            _show(f"slmk {precision}", report["rows"][f"slmk {precision}"])
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
        if not args.skip_llama:
            binaries, source = find_or_build_llama(args.llama_dir, work / "llama-build.log")
            f16 = builds / "f16.gguf"
            converted = convert_gguf(model, f16, source, "f16", work)
            report["rows"]["llama.cpp f16"] = _row(converted, f16)
            _show("llama.cpp f16", report["rows"]["llama.cpp f16"])
            for precision in precisions:
                out = builds / f"{peers[precision].lower()}.gguf"
                quantized = quantize_gguf(binaries, f16, out, peers[precision], args.threads, work, pure=False)
                row = _row(quantized, out)
                row["convert_and_quantize_seconds"] = converted["seconds"] + quantized["seconds"]
                row["convert_and_quantize_peak_rss_bytes"] = max(
                    converted["peak_rss_bytes"], quantized["peak_rss_bytes"]
                )
                report["rows"][f"llama.cpp {peers[precision]}"] = row
                _show(f"llama.cpp {peers[precision]}", row)
                if not args.keep:
                    out.unlink(missing_ok=True)
    finally:
        if not args.keep:
            (builds / "f16.gguf").unlink(missing_ok=True)
            shutil.rmtree(model, ignore_errors=True)
    report["machine"]["load_average_end"] = os.getloadavg()
    for precision in precisions:
        ours, peer = report["rows"].get(f"slmk {precision}"), report["rows"].get(f"llama.cpp {peers[precision]}")
        if ours and peer:
            rss = ours["peak_rss_bytes"] / peer["convert_and_quantize_peak_rss_bytes"]
            seconds = ours["seconds"] / peer["convert_and_quantize_seconds"]
            print(f"slmk {precision} vs llama.cpp convert+{peers[precision]}: peak RSS {rss:.2f}x, time {seconds:.2f}x")
    target = args.json or work / f"{args.shape}.json"
    target.write_text(json.dumps(report, indent=2))
    print(f"report: {target}")


def _row(measured: dict, out: Path) -> dict:
    return {
        "seconds": round(measured["seconds"], 1),
        "peak_rss_bytes": measured["peak_rss_bytes"],
        "bytes": size_of(out),
        "load_average": os.getloadavg(),
    }


def _show(name: str, row: dict) -> None:
    load = ", ".join(f"{x:.1f}" for x in row["load_average"])
    sizes = f"peak RSS {mib(row['peak_rss_bytes'])} MiB, output {mib(row['bytes'])} MiB"
    print(f"{name}: {row['seconds']:.1f} s, {sizes} (load average {load})", flush=True)


if __name__ == "__main__":
    main()
