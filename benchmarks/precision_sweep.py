"""Precision sweep: what int8 and int4 buy on a 0.5B-shaped model, and what they cost in quality.

Prints figures and ratios (not a timed test):

1. A model with Qwen2.5-0.5B's dimensions (hidden 896, 24 layers, 14 heads, 2 KV heads,
   intermediate 4864, vocab 151936, tied embeddings), random weights, made locally with
   transformers, built by slmk at fp32, int8 and int4. For each build, in its own
   subprocess (so peak RSS is that build's alone): decode tokens/s and time to first
   token at a short and a long prompt, peak RSS, file size; the same for transformers
   PyTorch fp32 on the same prompt tokens in the same run; and the decode rate against
   a memory-bandwidth bound measured here (weight bytes / copy bandwidth of a numpy
   memcpy of a large array).
2. The tiny chat model (examples/tiny-chat): perplexity on held-out text, domain
   accuracy and greedy agreement with fp32 at each precision (slmk compare's numbers).

Random weights say nothing about quality; they are exact about speed and memory,
which depend on the shapes alone. The tokenizer is the tiny model's (under a thousand
entries): its token ids index the first rows of the 151936-row embedding, the shape stays Qwen's.

Usage: python benchmarks/precision_sweep.py [--work DIR] [--new-tokens 64] [--repeats 3]
                                            [--lengths 64,512] [--skip-shaped] [--skip-tiny]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "examples" / "tiny-chat"
PRECISIONS = ("fp32", "int8", "int4")
QWEN25_05B = {
    "hidden_size": 896,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "intermediate_size": 4864,
    "vocab_size": 151936,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": True,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
}
ENV = {"ORT_DISABLE_TELEMETRY": "1", "OLIVE_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


# --------------------------------------------------------------------------- machine
def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import psutil

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def copy_bandwidth(megabytes: int = 512, runs: int = 10) -> float:
    """Bytes per second a numpy memcpy moves (read + write), best of ``runs``."""
    import numpy as np

    source = np.ones(megabytes * 2**20 // 8, dtype=np.float64)
    target = np.empty_like(source)
    np.copyto(target, source)  # fault the pages in first
    best = min(_timed(lambda: np.copyto(target, source)) for _ in range(runs))
    return 2 * source.nbytes / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# --------------------------------------------------------------------------- the shaped model
def make_shaped_model(folder: Path, layers: int | None = None) -> Path:
    """A Qwen2.5-0.5B-shaped Qwen2ForCausalLM with random weights and the tiny model's tokenizer."""
    import shutil

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(0)
    dims = dict(QWEN25_05B, **({"num_hidden_layers": layers} if layers else {}))
    config = Qwen2Config(**dims, bos_token_id=0, eos_token_id=2, pad_token_id=0, torch_dtype="float32")
    model = Qwen2ForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
        "generation_config.json",
    ):
        if (TINY / "model" / name).is_file():
            shutil.copy(TINY / "model" / name, folder / name)
    return folder


def prompt_texts(model: Path, lengths: list[int]) -> list[dict]:
    """Filler prompts whose chat-templated token count is as close to each length as possible."""
    from slmk_measure.driver import filler
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)

    def count(words: int) -> int:
        return len(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": filler(words)}],
                add_generation_prompt=True,
                tokenize=True,
                return_dict=False,
            )
        )

    prompts = []
    for length in lengths:
        low, high, best = 1, length, 1
        while low <= high:
            middle = (low + high) // 2
            if count(middle) <= length:
                best, low = middle, middle + 1
            else:
                high = middle - 1
        prompts.append({"target": length, "text": filler(best), "tokens": count(best)})
    return prompts


# --------------------------------------------------------------------------- children
def child_ortgenai(build: str, prompts: list[dict], new_tokens: int, repeats: int) -> dict:
    from slmk_measure.driver import Driver

    from slmk import app

    start = time.perf_counter()
    session = app.open_session(build)
    load_s = time.perf_counter() - start
    driver = Driver(session, Path(build))
    driver.timed(prompts[0]["text"], 2)  # warm-up
    rows = []
    for prompt in prompts:
        runs = [driver.timed(prompt["text"], new_tokens) for _ in range(repeats)]
        rows.append(
            {
                "prompt_tokens": runs[0].prompt_tokens,
                "generated_tokens": runs[0].generated_tokens,
                "decode_tps": statistics.median(r.decode_tokens_per_s for r in runs),
                "ttft_s": statistics.median(r.time_to_first_token_s for r in runs),
            }
        )
    session.close()
    return {"load_s": load_s, "rows": rows}


def child_torch(model: str, prompts: list[dict], new_tokens: int, repeats: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model)
    net = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    load_s = time.perf_counter() - start

    def run(ids: list[int]) -> tuple[float, float]:
        """Greedy decoding with the KV cache: (time to first token, decode tokens/s)."""
        with torch.inference_mode():
            begin = time.perf_counter()
            out = net(torch.tensor([ids]), use_cache=True)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            first = time.perf_counter()
            past = out.past_key_values
            for _ in range(new_tokens - 1):
                out = net(token, past_key_values=past, use_cache=True)
                past = out.past_key_values
                token = out.logits[:, -1].argmax(-1, keepdim=True)
            end = time.perf_counter()
        return first - begin, (new_tokens - 1) / (end - first)

    rows = []
    for index, prompt in enumerate(prompts):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt["text"]}], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        if index == 0:
            run(ids[:8])  # warm-up
        runs = [run(ids) for _ in range(repeats)]
        rows.append(
            {
                "prompt_tokens": len(ids),
                "generated_tokens": new_tokens,
                "decode_tps": statistics.median(r[1] for r in runs),
                "ttft_s": statistics.median(r[0] for r in runs),
            }
        )
    return {"load_s": load_s, "rows": rows, "threads": torch.get_num_threads()}


def run_child(kind: str, target: Path, prompts: list[dict], new_tokens: int, repeats: int) -> dict:
    """One measurement in a fresh process: its peak RSS is this model's alone."""
    spec = json.dumps(
        {"kind": kind, "target": str(target), "prompts": prompts, "new_tokens": new_tokens, "repeats": repeats}
    )
    result = subprocess.run(
        [sys.executable, __file__, "--child", spec], capture_output=True, text=True, env={**os.environ, **ENV}
    )
    if result.returncode != 0:
        raise SystemExit(f"{kind} child failed on {target}:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def child_main(spec_text: str) -> None:
    spec = json.loads(spec_text)
    worker = child_ortgenai if spec["kind"] == "ortgenai" else child_torch
    data = worker(spec["target"], spec["prompts"], spec["new_tokens"], spec["repeats"])
    data["peak_rss_bytes"] = peak_rss()
    print(json.dumps(data))


def peak_rss() -> int:
    """This process's peak RSS: VmHWM, which starts afresh at exec (ru_maxrss may carry the parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --------------------------------------------------------------------------- reports
def mb(size: float) -> str:
    return f"{size / 2**20:,.0f} MB"


def bytes_read_per_token(build: Path) -> tuple[int, int]:
    """(weight bytes a decode step reads, bytes of lookup-only tables) of a build.

    Every initializer is read once per generated token, except tables only a Gather
    uses (the input embedding, when the output layer does not share it): a step reads
    one row of those.
    """
    from collections import defaultdict

    import onnx

    model = onnx.load(str(build / "model.onnx"), load_external_data=False)
    sizes = {init.name: _initializer_bytes(init) for init in model.graph.initializer}
    users: dict[str, set[str]] = defaultdict(set)
    for node in model.graph.node:
        for name in node.input:
            if name in sizes:
                users[name].add(node.op_type)
    lookup = sum(sizes[n] for n, ops in users.items() if ops <= {"Gather", "GatherBlockQuantized"})
    return sum(sizes.values()) - lookup, lookup


def _initializer_bytes(init) -> int:
    import numpy as np
    import onnx

    external = {entry.key: entry.value for entry in init.external_data}
    if "length" in external:
        return int(external["length"])
    if init.raw_data:
        return len(init.raw_data)
    count = int(np.prod(init.dims)) if init.dims else 1
    return count * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize


def shaped_sweep(work: Path, args) -> dict:
    from slmk import app

    os.environ.setdefault("SLMK_CACHE_DIR", str(work / "slmk-cache"))
    bandwidth = copy_bandwidth()
    print(f"memcpy bandwidth (numpy, 512 MB, read+write): {bandwidth / 1e9:.1f} GB/s")
    start = time.perf_counter()
    model = make_shaped_model(work / "qwen2.5-0.5b-shaped", layers=args.layers)
    print(f"shaped model: {model} ({time.perf_counter() - start:.0f} s)")
    params = sum(_safetensors_params(p) for p in model.glob("*.safetensors"))
    prompts = prompt_texts(model, args.lengths)
    print(f"parameters: {params / 1e6:.1f} M; prompts: " + ", ".join(f"{p['tokens']} tokens" for p in prompts))
    rows = {}
    for precision in PRECISIONS:
        out = work / "builds" / precision
        start = time.perf_counter()
        if not (out / "genai_config.json").is_file():
            app.convert(model, out, precision=precision, force=True)
        build_s = time.perf_counter() - start
        measured = run_child("ortgenai", out, prompts, args.new_tokens, args.repeats)
        read, lookup = bytes_read_per_token(out)
        rows[precision] = {
            "size_bytes": sum(p.stat().st_size for p in out.iterdir() if p.is_file()),
            "weight_bytes": read,
            "lookup_bytes": lookup,
            "build_s": build_s,
            **measured,
        }
        print(
            f"  {precision}: built in {build_s:.0f} s, measured: "
            + ", ".join(f"{r['decode_tps']:.1f} tok/s at {r['prompt_tokens']}" for r in measured["rows"])
        )
    torch_row = run_child("torch", model, prompts, args.new_tokens, args.repeats)
    torch_row["weight_bytes"] = 4 * params  # tied embeddings: the output layer reads the whole table
    torch_row["size_bytes"] = sum(p.stat().st_size for p in model.glob("*.safetensors"))
    rows["torch-fp32"] = torch_row
    print(
        f"  torch fp32 ({torch_row['threads']} threads): "
        + ", ".join(f"{r['decode_tps']:.1f} tok/s at {r['prompt_tokens']}" for r in torch_row["rows"])
    )
    return {"bandwidth_bytes_per_s": bandwidth, "parameters": params, "prompts": prompts, "rows": rows}


def _safetensors_params(path: Path) -> int:
    import struct

    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    total = 0
    for name, tensor in header.items():
        if name != "__metadata__":
            count = 1
            for dim in tensor["shape"]:
                count *= dim
            total += count
    return total


def print_shaped(report: dict) -> None:
    rows, bandwidth = report["rows"], report["bandwidth_bytes_per_s"]
    reference = rows["fp32"]
    torch_rows = rows["torch-fp32"]["rows"]
    print()
    print(
        "| build | file size | vs fp32 | peak RSS | prompt tokens | first token | decode tok/s | vs torch fp32 "
        "| bandwidth bound tok/s | of bound |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        bound = bandwidth / row["weight_bytes"]
        for index, measured in enumerate(row["rows"]):
            cells = (
                [
                    name,
                    mb(row["size_bytes"]),
                    f"{row['size_bytes'] / reference['size_bytes']:.2f}x",
                    mb(row["peak_rss_bytes"]),
                ]
                if index == 0
                else ["", "", "", ""]
            )
            cells += [
                str(measured["prompt_tokens"]),
                f"{measured['ttft_s'] * 1000:.0f} ms",
                f"{measured['decode_tps']:.1f}",
                f"{measured['decode_tps'] / torch_rows[index]['decode_tps']:.2f}x",
                f"{bound:.1f}",
                f"{measured['decode_tps'] / bound:.0%}",
            ]
            print("| " + " | ".join(cells) + " |")


def tiny_sweep(work: Path) -> dict:
    os.environ.setdefault("SLMK_CACHE_DIR", str(work / "slmk-cache"))
    from slmk_measure.compare import CompareRequest, run_compare
    from slmk_measure.evalset import load_eval

    from slmk import app
    from slmk.plugins import get_registry

    request = CompareRequest(
        TINY / "model",
        list(PRECISIONS),
        items=load_eval(TINY / "data" / "eval.jsonl"),
        heldout=(TINY / "data" / "heldout.txt").read_text(),
    )
    report = run_compare(request, app.resolve_ep(get_registry(), "cpu"), lambda path: app.open_session(path))
    print()
    print(
        "| tiny-chat | size | vs fp32 | held-out ppl | ppl change | domain accuracy | greedy agreement | decode tok/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in report["precisions"]:
        print(
            f"| {row['precision']} | {row['size_bytes'] / 1e6:.2f} MB | {row['size_ratio']:.2f}x | {row['ppl']:.3f} | "
            f"{row['ppl_change_pct']:+.2f}% | {row['correct']}/{row['items']} | {row['agreement']:.3f} | "
            f"{row['decode_tps']:.0f} |"
        )
    print(f"recommendation: {report['recommendation']['precision']} ({report['recommendation']['why']})")
    return report


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child_main(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", help="Folder for the model and builds (default: a temporary one, removed after).")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lengths", type=lambda s: [int(v) for v in s.split(",")], default=[64, 512])
    parser.add_argument("--layers", type=int, help="Fewer layers, for a quick try of the script (default: 24).")
    parser.add_argument("--skip-shaped", action="store_true")
    parser.add_argument("--skip-tiny", action="store_true")
    parser.add_argument("--json", dest="json_file", help="Also write every figure to this JSON file.")
    args = parser.parse_args()
    os.environ.update({k: os.environ.get(k, v) for k, v in ENV.items()})
    info = machine()
    print(
        f"# precision sweep, {_dt.date.today().isoformat()}, {info['cpu']}, {info['cores']} cores, "
        f"{info['ram_gb']} GB RAM, Python {info['python']}"
    )
    with tempfile.TemporaryDirectory(prefix="slmk-sweep-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = {"machine": info, "date": _dt.date.today().isoformat(), "args": vars(args)}
        if not args.skip_shaped:
            results["shaped"] = shaped_sweep(work, args)
            print_shaped(results["shaped"])
        if not args.skip_tiny:
            results["tiny"] = tiny_sweep(work)
    if args.json_file:
        Path(args.json_file).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
