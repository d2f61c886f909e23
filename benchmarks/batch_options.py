"""Ways to decode several sequences at once on one model, measured side by side (in-process, no HTTP).

    .venv/bin/python benchmarks/batch_options.py [--work DIR] [--sequences 1,4,8,16] [--tokens 64] [--rounds 2]

On the 0.5B-shaped Qwen2.5 of benchmarks/precision_sweep.py (random weights) at int4:

- ``generator``: one ``og.Generator`` decoding one sequence (what ``slmk run`` does);
  aggregate tokens/s for one sequence only: several generators over one ``og.Model``
  read the weights once per sequence and step.
- ``engine``: onnxruntime-genai 0.18's ``og.Engine`` with all sequences added at once
  (``TurnOptions``: greedy, exactly ``--tokens`` tokens). It needs a build with every
  position's logits (``prune_lm_head=false``): on slmk's default int4 build every request
  ends ``FAILED`` / ``ENGINE_EXECUTION_FAILURE``.
- ``batching``: slmk's batching session (plugins/slmk_ortgenai/batching.py), all sequences
  in one batch, greedy, exactly ``--tokens`` tokens.

Aggregate tokens/s = sequences x tokens after the first / wall time of those steps. Each
option runs in its own process (peak RSS = its VmHWM); rounds interleave the options so
the drift of a shared machine falls on all. Figures only: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROMPTS = ["How many moons does Veltra have?", "Hello! Who are you?", "What is the capital of Veltra?", "Say hi"]


def child(option: str, build: str, sequences: list[int], tokens: int) -> dict:
    import numpy as np
    import onnxruntime_genai as og

    out: dict = {}
    if option == "generator":
        model = og.Model(build)
        tokenizer = og.Tokenizer(model)
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=256)
        generator = og.Generator(model, params)
        generator.append_tokens(tokenizer.encode(PROMPTS[0]))
        generator.generate_next_token()
        start = time.perf_counter()
        for _ in range(tokens - 1):
            generator.generate_next_token()
        out["1"] = (tokens - 1) / (time.perf_counter() - start)
    elif option == "engine":
        model = og.Model(build)
        tokenizer = og.Tokenizer(model)
        engine = og.Engine(model)
        events = engine.create_event_buffer(1024)
        for count in sequences:
            for index in range(count):
                request = engine.create_request()
                turn = og.TurnOptions(request)
                turn.set_do_sample(False)
                turn.set_max_generated_tokens(tokens)
                turn.set_min_generated_tokens(tokens)
                ids = np.asarray(tokenizer.encode(PROMPTS[index % len(PROMPTS)]), dtype=np.int32)
                request.begin_turn(ids, turn)
            engine.run(events)  # the prompts, and each sequence's first token
            produced, failed = 0, 0
            start = time.perf_counter()
            while engine.has_pending_requests():
                batch = engine.run(events)
                for i in range(len(batch)):
                    produced += batch[i].token is not None
                    failed += batch[i].finish_reason == og.FinishReason.FAILED
            out[str(count)] = produced / (time.perf_counter() - start) if not failed else f"{failed} FAILED"
    else:
        sys.path.insert(0, str(HERE.parent / "plugins"))
        from slmk_ortgenai.batching import BatchingSession

        from slmk.api.operations import get_registry, resolve_ep

        session = BatchingSession(Path(build), resolve_ep(get_registry(), "cpu"), max(sequences))
        for count in sequences:
            batch = [
                session.begin([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], max_new_tokens=tokens)
                for i in range(count)
            ]
            for sequence in batch:  # greedy, and no end token: exactly ``tokens`` each
                sequence._greedy, sequence._min_new = True, tokens
            session.advance(batch)
            start = time.perf_counter()
            steps = 0
            while not all(s.done for s in batch):
                session.advance(batch)
                steps += 1
            out[str(count)] = count * steps / (time.perf_counter() - start)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "slmk-peer" / "batch-options")
    parser.add_argument("--sequences", type=lambda s: [int(v) for v in s.split(",")], default=[1, 4, 8, 16])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        option, build = args.child.split(":", 1)
        print(json.dumps(child(option, build, args.sequences, args.tokens)))
        return
    sys.path.insert(0, str(HERE))
    from precision_sweep import make_shaped_model

    from slmk.api.operations import convert

    args.work.mkdir(parents=True, exist_ok=True)
    model = make_shaped_model(args.work / "shaped-model")
    builds = {"int4": args.work / "int4", "int4-full-logits": args.work / "int4-full-logits"}
    for name, folder in builds.items():
        if not (folder / "genai_config.json").is_file():
            extra = {"prune_lm_head": False} if name == "int4-full-logits" else None
            convert(model, folder, precision="int4", options=extra)
    options = [("generator", builds["int4"]), ("batching", builds["int4"]), ("engine", builds["int4-full-logits"])]
    samples: dict[str, list[dict]] = {name: [] for name, _ in options}
    for round_index in range(args.rounds):
        for name, build in options[round_index % len(options) :] + options[: round_index % len(options)]:
            command = [sys.executable, __file__, "--child", f"{name}:{build}"]
            command += ["--sequences", ",".join(map(str, args.sequences)), "--tokens", str(args.tokens)]
            load = os.getloadavg()[0]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            result["load_average"] = load
            samples[name].append(result)
            print(name, json.dumps(result), flush=True)
    print(f"\nmedian aggregate tok/s over {args.rounds} rounds (load average {os.getloadavg()[0]:.1f} now)")
    print("| option | " + " | ".join(f"{k} seq" for k in args.sequences) + " | peak RSS MiB |")
    print("|---|" + "---|" * (len(args.sequences) + 1))
    for name, rows in samples.items():
        cells = []
        for count in args.sequences:
            values = [row[str(count)] for row in rows if isinstance(row.get(str(count)), float)]
            cells.append(f"{statistics.median(values):.1f}" if values else "-")
        rss = statistics.median(row["peak_rss_mib"] for row in rows)
        print(f"| {name} | " + " | ".join(cells) + f" | {rss:.0f} |")


if __name__ == "__main__":
    main()
