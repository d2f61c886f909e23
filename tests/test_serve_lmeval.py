"""lm-evaluation-harness scores a multiple-choice task against slmk serve, as slmk scores it itself.

Real parts: lm-eval's ``local-completions`` model (token-id prompts, ``echo`` with
``logprobs``, ``max_tokens`` 1) run by its own command line in a subprocess, a task
built as a local dataset from the tiny model's eval data (no hub: offline), and a real
``slmk serve`` of the tiny int4 build; the reference is the ortgenai session's ``score``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from slmk_serve.server import ServeOptions, serve

from slmk.api.operations import open_session

EVAL = Path(__file__).resolve().parent.parent / "examples" / "tiny-chat" / "data" / "eval.jsonl"
DOCS = 8
CHOICES = 4

TASK = """task: veltra_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
"""


def write_task(folder: Path) -> Path:
    """A multiple-choice task: each question's expected answer among 3 others' answers."""
    rows = [json.loads(line) for line in EVAL.read_text(encoding="utf-8").splitlines() if line.strip()]
    answers = list(dict.fromkeys(row["expected"] for row in rows))
    docs = []
    for index, row in enumerate(rows[:DOCS]):
        others = [a for a in answers if a != row["expected"]]
        wrong = [others[(index + k) % len(others)] for k in range(CHOICES - 1)]
        label = index % CHOICES
        choices = wrong[:label] + [row["expected"]] + wrong[label:]
        docs.append({"question": row["messages"][0]["content"], "choices": choices, "label": label})
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "veltra.jsonl"
    data.write_text("".join(json.dumps(doc) + "\n" for doc in docs), encoding="utf-8")
    (folder / "veltra_mc.yaml").write_text(TASK.format(data=data), encoding="utf-8")
    return folder


@pytest.mark.slow
def test_lm_eval_loglikelihood_scores_equal_slmks_own(tiny_build, tmp_path):
    if shutil.which("lm_eval", path=str(Path(sys.executable).parent)) is None:
        pytest.fail("lm-eval is not installed: `make setup` installs the test extra (lm-eval[api])")
    build = tiny_build("int4")
    tasks = write_task(tmp_path / "tasks")
    out = tmp_path / "out"
    env = {
        **os.environ,
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(tmp_path / "datasets"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    with serve([f"tiny={build}"], ServeOptions(port=0)) as running:
        model_args = ",".join(
            [
                "model=tiny",
                f"base_url={running.base_url}/completions",
                "tokenizer_backend=huggingface",
                f"tokenizer={build}",  # the build's own tokenizer files, which the runtime reads too
                "num_concurrent=1",
                "max_retries=1",
            ]
        )
        command = [str(Path(sys.executable).parent / "lm_eval"), "--model", "local-completions"]
        command += ["--model_args", model_args, "--tasks", "veltra_mc", "--include_path", str(tasks)]
        command += ["--output_path", str(out), "--log_samples", "--batch_size", "1"]
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-4000:]
    samples_files = list(out.rglob("samples_veltra_mc_*.jsonl"))
    assert len(samples_files) == 1, list(out.rglob("*"))
    samples = [json.loads(line) for line in samples_files[0].read_text().splitlines()]
    assert len(samples) == DOCS

    session = open_session(build)
    try:
        compared, right = 0, 0
        for sample in samples:
            ours = []
            for argument, response in zip(sample["arguments"].values(), sample["resps"], strict=True):
                context, continuation = argument["arg_0"], argument["arg_1"]
                loglikelihood = float(response[0][0])  # lm-eval logs its figures as text
                whole, prefix = session.encode(context + continuation), session.encode(context)
                assert whole[: len(prefix)] == prefix  # the continuation starts a new token: same split
                nll = session.score(context + continuation)[0] - session.score(context)[0]
                assert -loglikelihood == pytest.approx(nll, rel=1e-6, abs=1e-6)
                ours.append(-nll)
                compared += 1
            right += ours.index(max(ours)) == sample["doc"]["label"]
        assert compared == DOCS * CHOICES
    finally:
        session.close()
    # lm-eval's accuracy is the one slmk's own scores give
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    assert results["results"]["veltra_mc"]["acc,none"] == pytest.approx(right / DOCS)
