"""slmk against llama.cpp on this CPU: int4/int8 builds of the same Hugging Face folder, side by side.

Prints figures and ratios (not a timed test), and writes them as JSON:

1. llama.cpp is built (or found) from the source vendored in the llama-cpp-python sdist
   (``pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36``; only the
   llama-bench, llama-quantize and llama-perplexity targets, Release, native flags minus
   AMX: see find_or_build_llama) in a cache folder
   outside git (default ~/.cache/slmk-peer). Nothing of llama.cpp is committed.
2. The 0.5B-shaped Qwen2.5 model of benchmarks/precision_sweep.py (random weights, its
   model maker) is converted by slmk to int4 and int8 and by llama.cpp to GGUF f16
   (convert_hf_to_gguf.py of the vendored source, with its own gguf-py), then quantized
   to Q8_0, Q4_0, Q4_0 --pure and Q4_K_M. Each conversion runs in its own process:
   wall time and peak RSS (the child's ru_maxrss from wait4, i.e. its VmHWM). slmk converts
   with ``--no-verify`` unless ``--verify`` is given: llama.cpp checks nothing against the
   source, and slmk's check runs the source model in fp32 (for this model 2.3 GiB of peak
   RSS, docs/benchmarks.md "What checking each build against its source costs").
3. Interleaved rounds: every round measures every build once, each in a fresh process
   (the order rotates from round to round, so drift of the shared machine spreads over
   all builds); medians over the rounds are reported.
4. Perplexity side by side on the tiny chat model's held-out text: fp32 -> int4 (slmk) and
   f32 -> Q4_0 (llama.cpp), both scored with llama-perplexity's protocol (chunks of
   ``--ppl-ctx`` tokens, the second half of each chunk scored).

Same definitions on both sides (both count model tokens, never text):
- prefill tok/s at P: P prompt tokens (random ids) fed in one batch to an empty cache,
  divided by the wall time of that call (llama-bench ``-p P``: pp; slmk:
  ``Generator.append_tokens`` of P ids, which also computes the logits).
- decode tok/s at depth D: 64 (``--new-tokens``) tokens generated one at a time after a
  context of D tokens, divided by their wall time (llama-bench ``-n 64 -d D``: tg; slmk: 64
  ``generate_next_token`` calls after the first token was sampled from the prefill, greedy).
- first-token latency at P: P / prefill rate (the time until the first new token's logits).
- peak RSS: the measuring process's high-water mark (wait4 ru_maxrss), load included;
  for llama.cpp the larger of its two llama-bench processes (prefill tests, decode tests).
  The slmk process is a Python interpreter: the script prints its baseline (Python +
  onnxruntime_genai imported, no model) so it can be subtracted.
- threads: ``--threads`` (default: this machine's logical cores) for llama.cpp ``-t`` and
  for ONNX Runtime ``intra_op_num_threads`` in genai_config.json.

- prompt feeding: slmk's runtime feeds a prompt in calls of 128 tokens (its PREFILL_CHUNK:
  a graph that computes logits at every position needs 297 MiB for 512 tokens of a
  151936-word vocabulary); the prefill rate counts all calls. slmk's int4/int8 builds
  compute the logits of the last position only (prune_lm_head), as llama-bench does (one
  batch of up to 2048 tokens).

slmk rows: the default int4 build, the same with every position's logits, block_size 128
(what `slmk tune --rebuild` picks here) and int8. Extra rows (unless --skip-variants)
measure settings before/after: the build as the 0.18 builder writes it (no thread count:
one intra-op thread), and the prompt in one call.

Usage: python benchmarks/peer_llamacpp.py [--work DIR] [--llama-dir DIR] [--rounds 5]
           [--lengths 64,512] [--new-tokens 64] [--threads N] [--json FILE] [--reuse]
           [--layers N] [--skip-ppl] [--skip-variants] [--only TEXT] [--extra LABEL=BUILD] [--verify]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "examples" / "tiny-chat"
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
LLAMA_TARGETS = ("llama-bench", "llama-quantize", "llama-perplexity")
ENV = {"ORT_DISABLE_TELEMETRY": "1", "OLIVE_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
#: Token ids used as prompts: inside every tokenizer's range here (the tiny tokenizer has 936 entries).
TOKEN_RANGE = (3, 900)


# Runs convert_hf_to_gguf.py of the vendored source with two patches for the shaped model's
# tokenizer (the tiny model's Qwen2 byte-level BPE with 936 entries): the converter identifies a
# BPE pre-tokenizer by hashing how a test string tokenizes, which no stock tokenizer's hash
# matches for this vocabulary, though its pre-tokenizer is Qwen2's exactly (same regex); and it
# tries sentencepiece first, which is not installed and not needed (there is no tokenizer.model).
def convert_wrapper(module: str, model_class: str, pre_tokenizer: str) -> str:
    """convert_hf_to_gguf.py with ``conversion.<module>.<model_class>`` taking a byte-level BPE
    vocabulary whose pre-tokenizer is llama.cpp's ``pre_tokenizer``."""
    return f"""
import sys
source = sys.argv[1]
sys.path[:0] = [source, source + "/gguf-py"]
import conversion.base as base
import conversion.{module} as arch
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "{pre_tokenizer}"
arch.{model_class}.set_vocab = lambda self: self._set_vocab_gpt2()
import convert_hf_to_gguf
sys.argv = ["convert_hf_to_gguf.py", *sys.argv[2:]]
convert_hf_to_gguf.main()
"""


CONVERT_WRAPPER = convert_wrapper("qwen", "Qwen2Model", "qwen2")


# --------------------------------------------------------------------------- processes
def run_measured(cmd: list[str], *, env: dict | None = None, cwd: Path | None = None, log: Path | None = None) -> dict:
    """Run ``cmd``; its wall time, peak RSS (wait4's ru_maxrss: the child's VmHWM) and stdout."""
    with tempfile.TemporaryFile() as out, open(log, "ab") if log else tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        process = subprocess.Popen(cmd, stdout=out, stderr=err, env={**os.environ, **ENV, **(env or {})}, cwd=cwd)
        # wait4, not wait: its rusage is this child's alone (RUSAGE_CHILDREN keeps the maximum of all).
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        code = os.waitstatus_to_exitcode(status)
        process.returncode = code
        out.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        if code != 0:
            err.flush()
            err.seek(0)
            tail = (log.read_bytes() if log else err.read()).decode("utf-8", "replace")[-3000:]
            raise SystemExit(f"failed ({code}): {' '.join(map(str, cmd))}\n{tail}\n{stdout[-2000:]}")
    return {"seconds": seconds, "peak_rss_bytes": usage.ru_maxrss * 1024, "stdout": stdout}


def machine(threads: int) -> dict:
    cpu = platform.processor()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "cpu": cpu,
        "logical_cores": len(os.sched_getaffinity(0)),
        "threads": threads,
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


# --------------------------------------------------------------------------- llama.cpp
def find_or_build_llama(llama_dir: Path, log: Path, targets: tuple[str, ...] = LLAMA_TARGETS) -> tuple[Path, Path]:
    """(bin folder with ``targets``, vendored llama.cpp source); builds the missing ones."""
    llama_dir.mkdir(parents=True, exist_ok=True)
    name = LLAMA_CPP_PYTHON.replace("==", "-").replace("-", "_", 2)  # llama_cpp_python-0.3.36
    source = llama_dir / name / "vendor" / "llama.cpp"
    build = llama_dir / "build"
    binaries = build / "bin"
    if all((binaries / t).is_file() for t in targets) and (source / "convert_hf_to_gguf.py").is_file():
        return binaries, source
    if not (source / "CMakeLists.txt").is_file():
        archives = sorted(llama_dir.glob("llama_cpp_python-*.tar.gz"))
        if not archives:
            print(f"downloading the {LLAMA_CPP_PYTHON} sdist into {llama_dir}")
            pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
            subprocess.run([*pip, LLAMA_CPP_PYTHON, "-d", str(llama_dir)], check=True)
            archives = sorted(llama_dir.glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(archives[-1]) as archive:
            archive.extractall(llama_dir, filter="data")
    print(f"building {', '.join(targets)} (Release) in {build}: several minutes on 2 cores")
    configure = ["cmake", "-S", str(source), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"]
    configure += ["-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF"]
    configure += ["-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON", "-DGGML_NATIVE=ON"]
    # Native flags minus AMX: VMs whose CPU reports AMX without allowing it (the kernel has not
    # enabled the tile state) die with SIGSEGV in ggml_backend_amx_mul_mat; the AVX-512/AVX2
    # kernels are as fast for these batch sizes.
    no_amx = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    configure += [f"-DCMAKE_C_FLAGS={no_amx}", f"-DCMAKE_CXX_FLAGS={no_amx}"]
    if shutil.which("ninja"):
        configure += ["-G", "Ninja"]
    with open(log, "ab") as handle:
        subprocess.run(configure, check=True, stdout=handle, stderr=handle)
        jobs = str(len(os.sched_getaffinity(0)))
        subprocess.run(
            ["cmake", "--build", str(build), "-j", jobs, "--target", *targets],
            check=True,
            stdout=handle,
            stderr=handle,
        )
    return binaries, source


def llama_commit(source: Path) -> str:
    for candidate in (source / "ggml" / "src" / "ggml-commit", source / "build-info.txt"):
        if candidate.is_file():
            return candidate.read_text().strip()
    return "vendored in " + LLAMA_CPP_PYTHON


# --------------------------------------------------------------------------- conversions
def convert_slmk(
    model: Path, out: Path, precision: str, work: Path, options: dict | None = None, verify: bool = True
) -> dict:
    """HF -> slmk build in a child process with an empty step cache (nothing reused);
    ``verify`` False skips the check against the source (``--no-verify``)."""
    cache = Path(tempfile.mkdtemp(prefix="slmk-cache-", dir=work))
    code = (
        "import json, sys\n"
        "from slmk.api.operations import convert\n"
        "convert(sys.argv[1], sys.argv[2], precision=sys.argv[3], force=True,"
        " options=json.loads(sys.argv[4]) or {}, verify=sys.argv[5] == '1')\n"
    )
    try:
        measured = run_measured(
            [sys.executable, "-c", code, str(model), str(out), precision, json.dumps(options or {}), str(int(verify))],
            env={"SLMK_CACHE_DIR": str(cache)},
            log=work / "convert.log",
        )
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return measured


def convert_gguf(
    model: Path, out: Path, source: Path, outtype: str, work: Path, wrapper: str = CONVERT_WRAPPER
) -> dict:
    """HF -> GGUF with convert_hf_to_gguf.py run through ``wrapper`` (patches for a model's tokenizer)."""
    script = work / f"convert_wrapper_{hashlib.sha256(wrapper.encode()).hexdigest()[:8]}.py"
    script.write_text(wrapper)
    tmp = out.with_name(out.name + ".tmp")
    cmd = [sys.executable, str(script), str(source), str(model), "--outtype", outtype, "--outfile", str(tmp)]
    measured = run_measured(cmd, log=work / "convert.log")
    os.replace(tmp, out)
    return measured


def quantize_gguf(
    binaries: Path, source_file: Path, out: Path, kind: str, threads: int, work: Path, pure: bool
) -> dict:
    tmp = out.with_name(out.name + ".tmp")
    cmd = [str(binaries / "llama-quantize"), *(["--pure"] if pure else []), str(source_file), str(tmp), kind]
    measured = run_measured([*cmd, str(threads)], log=work / "convert.log")
    os.replace(tmp, out)
    return measured


def size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file() and p.name != "slmk_build.json")


# --------------------------------------------------------------------------- slmk (ORT GenAI) child
def variant_folder(build: Path, session: dict, search: dict, work: Path, name: str) -> Path:
    """A folder of hard links to ``build`` with its own genai_config.json (session options set/removed)."""
    folder = work / "variants" / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for item in build.iterdir():
        if item.is_file() and item.name != "genai_config.json":
            os.link(item, folder / item.name)
    config = json.loads((build / "genai_config.json").read_text())
    options = config["model"]["decoder"].setdefault("session_options", {})
    for key, value in session.items():
        if value is None:
            options.pop(key, None)
        else:
            options[key] = value
    config["search"].update(search)
    (folder / "genai_config.json").write_text(json.dumps(config, indent=2))
    return folder


def ort_child(spec: dict) -> dict:
    """Load the build, then prefill at each length and decode at each depth (see the module doc)."""
    import onnxruntime_genai as og

    rng = random.Random(0)
    lengths, depths, new_tokens = spec["lengths"], spec["depths"], spec["new_tokens"]
    longest = max(lengths + depths)
    ids = [rng.randrange(*TOKEN_RANGE) for _ in range(longest)]
    start = time.perf_counter()
    model = og.Model(spec["build"])
    load_s = time.perf_counter() - start

    def generator(max_length: int):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=max_length, do_sample=False)
        return og.Generator(model, params)

    # as slmk's runtime feeds a prompt: in calls of PREFILL_CHUNK tokens (0: one call)
    chunk = spec.get("prefill_chunk") or longest

    def feed(gen, tokens: list[int]) -> None:
        for begin in range(0, len(tokens), chunk):
            gen.append_tokens(tokens[begin : begin + chunk])

    warm = generator(16)
    warm.append_tokens(ids[:8])
    warm.generate_next_token()
    del warm
    prefill = {}
    for length in lengths:
        gen = generator(length + 1)
        begin = time.perf_counter()
        feed(gen, ids[:length])
        prefill[str(length)] = length / (time.perf_counter() - begin)
        del gen
    decode = {}
    for depth in depths:
        gen = generator(depth + new_tokens + 1)
        feed(gen, ids[:depth])
        gen.generate_next_token()  # samples from the prefill's logits: no model run
        begin = time.perf_counter()
        for _ in range(new_tokens):
            gen.generate_next_token()
        decode[str(depth)] = new_tokens / (time.perf_counter() - begin)
        del gen
    return {"load_s": load_s, "prefill_tps": prefill, "decode_tps": decode}


def ort_baseline_child() -> dict:
    import onnxruntime_genai  # noqa: F401  (what every slmk measuring process has loaded)

    return {}


def measure_ort(build: Path, lengths: list[int], depths: list[int], new_tokens: int, prefill_chunk: int) -> dict:
    spec = {"build": str(build), "lengths": lengths, "depths": depths, "new_tokens": new_tokens}
    spec["prefill_chunk"] = prefill_chunk
    measured = run_measured([sys.executable, __file__, "--ort-child", json.dumps(spec)])
    data = json.loads(measured["stdout"].strip().splitlines()[-1])
    data["peak_rss_bytes"] = measured["peak_rss_bytes"]
    return data


# --------------------------------------------------------------------------- llama.cpp measuring
def measure_llama(binaries: Path, gguf: Path, lengths: list[int], depths: list[int], new_tokens: int, threads: int):
    bench = [str(binaries / "llama-bench"), "-m", str(gguf), "-t", str(threads), "-r", "1", "-o", "json"]
    joined = ",".join
    pp = run_measured([*bench, "-p", joined(map(str, lengths)), "-n", "0"])
    tg = run_measured([*bench, "-p", "0", "-n", str(new_tokens), "-d", joined(map(str, depths))])
    prefill, decode = {}, {}
    for test in json.loads(pp["stdout"]):
        prefill[str(test["n_prompt"])] = test["avg_ts"]
    for test in json.loads(tg["stdout"]):
        decode[str(test["n_depth"])] = test["avg_ts"]
    return {
        "prefill_tps": prefill,
        "decode_tps": decode,
        "peak_rss_bytes": max(pp["peak_rss_bytes"], tg["peak_rss_bytes"]),
    }


# --------------------------------------------------------------------------- perplexity
def ppl_ort(build: Path, text: str, ctx: int) -> dict:
    """llama-perplexity's protocol on an slmk build: non-overlapping chunks of ``ctx`` tokens,
    the second half of each scored (each scored token sees at least ctx/2 tokens)."""
    import math

    import numpy as np
    import onnxruntime_genai as og

    model = og.Model(str(build))
    tokens = list(og.Tokenizer(model).encode(text))
    chunks = len(tokens) // ctx
    nll, count = 0.0, 0
    for chunk in range(chunks):
        ids = tokens[chunk * ctx : (chunk + 1) * ctx]
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=ctx)
        gen = og.Generator(model, params)
        gen.append_tokens(ids)
        logits = np.asarray(gen.get_output("logits")[0], dtype=np.float64)
        first = ctx // 2
        rows = logits[first : ctx - 1]
        peak = rows.max(axis=-1, keepdims=True)
        log_norm = np.log(np.exp(rows - peak).sum(axis=-1)) + peak[:, 0]
        targets = np.asarray(ids[first + 1 : ctx])
        nll += float((log_norm - rows[np.arange(len(targets)), targets]).sum())
        count += len(targets)
    return {"tokens": len(tokens), "chunks": chunks, "ppl": math.exp(nll / count) if count else float("nan")}


def ppl_llama(
    binaries: Path,
    gguf: Path,
    text_file: Path,
    ctx: int,
    threads: int,
    running: bool = False,
    logits_file: Path | None = None,
) -> dict:
    """llama-perplexity's final estimate; ``running`` adds the estimate it prints after each chunk
    (``[i]ppl``: the perplexity of chunks 1..i, 4 decimals), from which each chunk's loss follows.
    ``logits_file``: llama-perplexity also writes every scored position's log-probabilities there
    (its ``--kl-divergence-base`` file, 16 bits a word; quality_per_byte.py reads it)."""
    import re

    cmd = [str(binaries / "llama-perplexity"), "-m", str(gguf), "-f", str(text_file), "-c", str(ctx)]
    # --no-escape: the file is raw text; by default llama.cpp turns its "\\n", "\\t", ... into control characters
    cmd += ["-b", str(ctx), "-t", str(threads), "--no-escape"]
    if logits_file is not None:  # without --kl-divergence this option names the file to write
        cmd += ["--kl-divergence-base", str(logits_file)]
    log = Path(tempfile.mkstemp(suffix=".log")[1])
    try:
        printed = run_measured(cmd, log=log)["stdout"]  # the running estimates go to stdout
        output = log.read_text(errors="replace")
    finally:
        log.unlink(missing_ok=True)
    final = re.search(r"Final estimate: PPL = ([0-9.]+)", output)
    chunks = re.search(r"calculating perplexity over (\d+) chunks", output)
    measured = {
        "ppl": float(final.group(1)) if final else float("nan"),
        "chunks": int(chunks.group(1)) if chunks else None,
    }
    if running:
        measured["running"] = [float(v) for v in re.findall(r"\[\d+\]([0-9.]+|nan)", printed)]
    return measured


def perplexity_side_by_side(work: Path, binaries: Path, source: Path, threads: int, ctx: int) -> dict:
    model = TINY / "model"
    text_file = TINY / "data" / "heldout.txt"
    text = text_file.read_text()
    out = work / "tiny"
    out.mkdir(exist_ok=True)
    for precision in ("fp32", "int4"):
        if not (out / precision / "genai_config.json").is_file():
            convert_slmk(model, out / precision, precision, work)
    if not (out / "f32.gguf").is_file():
        convert_gguf(model, out / "f32.gguf", source, "f32", work)
    if not (out / "q4_0.gguf").is_file():
        quantize_gguf(binaries, out / "f32.gguf", out / "q4_0.gguf", "Q4_0", threads, work, pure=True)
    slmk_rows = {p: ppl_child(out / p, text, ctx) for p in ("fp32", "int4")}
    llama_rows = {k: ppl_llama(binaries, out / f"{k}.gguf", text_file, ctx, threads) for k in ("f32", "q4_0")}
    return {"ctx": ctx, "slmk": slmk_rows, "llama.cpp": llama_rows}


def ppl_child(build: Path, text: str, ctx: int) -> dict:
    spec = {"build": str(build), "text": text, "ctx": ctx}
    measured = run_measured([sys.executable, __file__, "--ppl-child", json.dumps(spec)])
    return json.loads(measured["stdout"].strip().splitlines()[-1])


# --------------------------------------------------------------------------- report
def mib(size: float) -> str:
    return f"{size / 2**20:,.0f}"


def median_of(samples: list[dict], field: str, key: str) -> float:
    return statistics.median(s[field][key] for s in samples)


def print_table(report: dict) -> None:
    lengths, depths = report["lengths"], report["depths"]
    rows = report["rows"]
    reference = {name: rows.get(name) for name in ("llama.cpp Q4_0", "llama.cpp Q4_0 --pure")}
    print()
    head = ["build", "file MiB"]
    head += [f"prefill {p} tok/s" for p in lengths] + [f"first token {p} ms" for p in lengths]
    head += [f"decode tok/s @{d}" for d in depths]
    head += ["peak RSS MiB", "HF -> file s", "convert peak RSS MiB"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, row in rows.items():
        cells = [name, mib(row["size_bytes"]) if row.get("size_bytes") else ""]
        cells += [f"{row['prefill_tps'][str(p)]:.0f}" for p in lengths]
        cells += [f"{1000 * p / row['prefill_tps'][str(p)]:.0f}" for p in lengths]
        cells += [f"{row['decode_tps'][str(d)]:.1f}" for d in depths]
        cells += [mib(row["peak_rss_bytes"])]
        convert = row.get("convert")
        cells += [f"{convert['seconds']:.1f}", mib(convert["peak_rss_bytes"])] if convert else ["", ""]
        print("| " + " | ".join(cells) + " |")
    q4, pure = reference["llama.cpp Q4_0"], reference["llama.cpp Q4_0 --pure"]
    if q4 and pure:
        print()
        print("ratios of slmk rows (prefill and peak RSS vs Q4_0, decode vs Q4_0 --pure; higher is better for slmk")
        print("except peak RSS and convert time, where lower is):")
        for name, row in rows.items():
            if name.startswith("llama.cpp"):
                continue
            parts = [f"prefill {p}: {row['prefill_tps'][str(p)] / q4['prefill_tps'][str(p)]:.2f}x" for p in lengths]
            parts += [f"decode @{d}: {row['decode_tps'][str(d)] / pure['decode_tps'][str(d)]:.2f}x" for d in depths]
            parts.append(f"peak RSS: {row['peak_rss_bytes'] / q4['peak_rss_bytes']:.2f}x")
            if row.get("convert") and q4.get("convert"):
                parts.append(f"convert time: {row['convert']['seconds'] / q4['convert']['seconds']:.2f}x")
            print(f"  {name}: " + ", ".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "slmk-peer" / "work")
    parser.add_argument("--llama-dir", type=Path, default=Path.home() / ".cache" / "slmk-peer")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lengths", default="64,512", help="prompt lengths (prefill) and decode depths")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--layers", type=int, default=None, help="fewer layers than 24 for a quick run")
    parser.add_argument("--json", type=Path, default=None, help="where to write the report (default WORK/peer.json)")
    parser.add_argument("--reuse", action="store_true", help="keep conversions (and their figures) from a last run")
    parser.add_argument("--skip-ppl", action="store_true")
    parser.add_argument("--skip-variants", action="store_true", help="no before/after rows of slmk settings")
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="LABEL=BUILD",
        help="another slmk build to measure in the same rounds (e.g. one `slmk tune` rebuilt); repeatable",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="TEXT",
        help="measure only the rows whose label contains TEXT (repeatable; conversions are still made)",
    )
    parser.add_argument("--ppl-ctx", type=int, default=64)
    parser.add_argument(
        "--verify", action="store_true", help="slmk conversions check the build against the source (its default)"
    )
    parser.add_argument(
        "--convert-rounds", type=int, default=1, help="conversions repeated, interleaved: median time, largest peak"
    )
    parser.add_argument(
        "--prefill-chunk", type=int, default=128, help="prompt tokens per call, as slmk's runtime (PREFILL_CHUNK)"
    )
    args = parser.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.update(ENV)
    report: dict = {"machine": machine(args.threads), "lengths": lengths, "depths": lengths}
    report["new_tokens"] = args.new_tokens
    print(f"machine: {report['machine']}")
    binaries, source = find_or_build_llama(args.llama_dir, work / "llama-build.log")
    report["llama_cpp"] = {"source": str(source), "version": llama_commit(source)}
    # Made in a child: this process stays small, because a child's ru_maxrss starts from its parent's
    # RSS at fork (Linux carries the old mm's high-water mark across exec), which would mask small peaks.
    model = work / "qwen2.5-0.5b-shaped"
    maker = "import sys; from pathlib import Path; from precision_sweep import make_shaped_model; "
    maker += "make_shaped_model(Path(sys.argv[1]), layers=int(sys.argv[2]) or None)"
    run_measured(
        [sys.executable, "-c", maker, str(model), str(args.layers or 0)],
        env={"PYTHONPATH": str(REPO / "benchmarks")},
    )
    report["fp32_bytes"] = sum(p.stat().st_size for p in model.glob("*.safetensors"))
    print(f"model: {model} ({mib(report['fp32_bytes'])} MiB of fp32 safetensors)")

    # ---- conversions (each in its own process; the GGUF quantizations start from the f16 file)
    conversions_file = work / "conversions.json"
    conversions = json.loads(conversions_file.read_text()) if args.reuse and conversions_file.is_file() else {}
    builds = work / "builds"
    builds.mkdir(exist_ok=True)
    # slmk rows: the default build (logits of the last prompt position only, as llama.cpp
    # computes them), the same with every position's logits (before/after), and the block size
    # `slmk tune --rebuild` picks on this CPU.
    slmk_options = {
        "slmk int4, every position's logits": {"prune_lm_head": "false"},
        "slmk int4 block_size=128": {"block_size": "128"},
    }
    plan = [
        ("slmk int4", "slmk", builds / "slmk-int4", "int4"),
        ("slmk int4, every position's logits", "slmk", builds / "slmk-int4-full-logits", "int4"),
        ("slmk int4 block_size=128", "slmk", builds / "slmk-int4-b128", "int4"),
        ("slmk int8", "slmk", builds / "slmk-int8", "int8"),
        ("gguf f16", "gguf", builds / "f16.gguf", "f16"),
        ("llama.cpp Q8_0", "quant", builds / "q8_0.gguf", "Q8_0"),
        ("llama.cpp Q4_0", "quant", builds / "q4_0.gguf", "Q4_0"),
        ("llama.cpp Q4_0 --pure", "quant", builds / "q4_0-pure.gguf", "Q4_0"),
        ("llama.cpp Q4_K_M", "quant", builds / "q4_k_m.gguf", "Q4_K_M"),
    ]
    # Repeated rounds (--convert-rounds) interleave every conversion; the median time and the
    # largest peak are kept: one conversion's time moves by up to 30% on a shared machine.
    runs: dict[str, list[dict]] = {}
    for round_index in range(args.convert_rounds):
        for name, kind, out, what in plan:
            if name in conversions and out.exists():
                continue
            print(f"converting: {name} (round {round_index + 1}/{args.convert_rounds})")
            if kind == "slmk":
                measured = convert_slmk(model, out, what, work, slmk_options.get(name), verify=args.verify)
            elif kind == "gguf":
                measured = convert_gguf(model, out, source, what, work)
            else:
                pure = name.endswith("--pure")
                measured = quantize_gguf(binaries, builds / "f16.gguf", out, what, args.threads, work, pure)
            runs.setdefault(name, []).append(measured)
    for name, measured in runs.items():
        conversions[name] = {
            "seconds": statistics.median(m["seconds"] for m in measured),
            "peak_rss_bytes": max(m["peak_rss_bytes"] for m in measured),
            "runs_seconds": [m["seconds"] for m in measured],
        }
    conversions_file.write_text(json.dumps(conversions, indent=2))
    # HF -> quantized GGUF counts the f16 conversion too (time summed, peak the larger).
    f16 = conversions["gguf f16"]
    for name, kind, _, _ in plan:
        if kind == "quant":
            step = conversions[name]
            step["total"] = {
                "seconds": f16["seconds"] + step["seconds"],
                "peak_rss_bytes": max(f16["peak_rss_bytes"], step["peak_rss_bytes"]),
            }
    report["conversions"] = conversions

    # ---- what is measured each round
    targets: dict[str, dict] = {}
    for name, kind, out, _ in plan:
        if kind == "gguf":
            continue
        convert = conversions[name].get("total", conversions[name])
        entry = {"kind": "llama" if kind == "quant" else "ort", "path": out, "size_bytes": size_of(out)}
        targets[name] = {**entry, "convert": convert}
    int4 = builds / "slmk-int4"
    for name, _, out, _ in plan:
        if name in slmk_options:
            folder = variant_folder(out, {"intra_op_num_threads": args.threads}, {}, work, out.name)
            targets[name]["path"] = folder
    targets["slmk int4"]["path"] = variant_folder(int4, {"intra_op_num_threads": args.threads}, {}, work, "threads")
    targets["slmk int8"]["path"] = variant_folder(
        builds / "slmk-int8", {"intra_op_num_threads": args.threads}, {}, work, "int8-threads"
    )
    if not args.skip_variants:
        size = size_of(int4)
        targets["slmk int4, no thread count (0.18 default)"] = {
            "kind": "ort",
            "path": variant_folder(int4, {"intra_op_num_threads": None}, {}, work, "no-threads"),
            "size_bytes": size,
        }
        targets["slmk int4, prompt in one call"] = {
            "kind": "ort",
            "path": targets["slmk int4"]["path"],
            "size_bytes": size,
            "prefill_chunk": 0,
        }
    for index, item in enumerate(args.extra):
        label, _, path = item.rpartition("=")  # the label may hold "=", a path rarely does
        build = Path(path).expanduser().resolve()
        if not label or not (build / "genai_config.json").is_file():
            raise SystemExit(f"--extra {item!r}: expected LABEL=BUILD with a genai_config.json in BUILD")
        folder = variant_folder(build, {"intra_op_num_threads": args.threads}, {}, work, f"extra-{index}")
        targets[label] = {"kind": "ort", "path": folder, "size_bytes": size_of(build)}
    if args.only:
        targets = {name: target for name, target in targets.items() if any(text in name for text in args.only)}
    samples: dict[str, list[dict]] = {name: [] for name in targets}
    baseline = run_measured([sys.executable, __file__, "--ort-baseline"])
    report["python_baseline_rss_bytes"] = baseline["peak_rss_bytes"]
    if not args.skip_ppl:
        report["perplexity"] = perplexity_side_by_side(work, binaries, source, args.threads, args.ppl_ctx)
    out = args.json or work / "peer.json"
    names = list(targets)
    for round_index in range(args.rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        print(f"round {round_index + 1}/{args.rounds} (load {os.getloadavg()[0]:.2f})", flush=True)
        for name in order:
            target = targets[name]
            if target["kind"] == "ort":
                chunk = target.get("prefill_chunk", args.prefill_chunk)
                data = measure_ort(target["path"], lengths, lengths, args.new_tokens, chunk)
            else:
                data = measure_llama(binaries, target["path"], lengths, lengths, args.new_tokens, args.threads)
            samples[name].append(data)
        # after every round: the medians so far, printed and written (a stopped run keeps its rounds)
        report["rounds_done"] = round_index + 1
        report["rows"] = summarize(targets, samples, lengths)
        report["load_average_after"] = os.getloadavg()
        out.write_text(json.dumps(report, indent=2, default=str))
        print_report(report)
    print(f"\nJSON: {out}")


def summarize(targets: dict, samples: dict, lengths: list[int]) -> dict:
    rows = {}
    for name, target in targets.items():
        runs = samples[name]
        rows[name] = {
            "size_bytes": target.get("size_bytes"),
            "convert": target.get("convert"),
            "prefill_tps": {str(p): median_of(runs, "prefill_tps", str(p)) for p in lengths},
            "decode_tps": {str(d): median_of(runs, "decode_tps", str(d)) for d in lengths},
            "peak_rss_bytes": statistics.median(r["peak_rss_bytes"] for r in runs),
            "samples": runs,
        }
    return rows


def print_report(report: dict) -> None:
    print(f"\nmedians of {report['rounds_done']} rounds; load average now {report['load_average_after']}")
    print_table(report)
    print(
        f"\nslmk rows: a Python process; Python + onnxruntime_genai alone peak at "
        f"{mib(report['python_baseline_rss_bytes'])} MiB (included above)."
    )
    print(f"fp32 safetensors: {mib(report['fp32_bytes'])} MiB; HF -> file for llama.cpp = convert to f16 + quantize.")
    if "perplexity" in report:
        ppl = report["perplexity"]
        print(f"perplexity on tiny-chat heldout.txt (chunks of {ppl['ctx']} tokens, second halves scored):")
        for side, (low, high) in (("slmk", ("fp32", "int4")), ("llama.cpp", ("f32", "q4_0"))):
            rows = ppl[side]
            ratio = rows[high]["ppl"] / rows[low]["ppl"]
            print(
                f"  {side}: {low} {rows[low]['ppl']:.3f} -> {high} {rows[high]['ppl']:.3f} ({ratio:.3f}x); "
                f"{rows[low]['chunks']} chunks of {ppl['ctx']} tokens"
            )


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--ort-child":
        print(json.dumps(ort_child(json.loads(sys.argv[2]))))
    elif len(sys.argv) > 2 and sys.argv[1] == "--ppl-child":
        spec = json.loads(sys.argv[2])
        print(json.dumps(ppl_ort(Path(spec["build"]), spec["text"], spec["ctx"])))
    elif len(sys.argv) > 1 and sys.argv[1] == "--ort-baseline":
        print(json.dumps(ort_baseline_child()))
    else:
        main()
