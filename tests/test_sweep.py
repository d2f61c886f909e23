"""slmk sweep: real builds and measurements of two tiny models, on the local executor,
on an embedded Ray, and on a two-node Ray cluster started on this machine.

One step cache serves the whole module, so each (model, precision) is converted once
and every later cell reuses it; one embedded Ray session serves the module too (Ray
takes seconds to start on two cores).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TINY_MODEL = REPO / "examples" / "tiny-chat" / "model"

# Ray: no usage stats, token auth with a token that lives in the environment (never in ~/.ray).
os.environ.update({"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)})

from slmk_measure.sweep import (  # noqa: E402
    DETERMINISTIC_COLUMNS,
    RESULTS_FILE,
    config_from_dict,
    read_results,
    run_sweep,
)

from slmk.api import ExecutorOptions, Task, UsageError  # noqa: E402
from slmk.api.operations import get_registry  # noqa: E402

ALL_PRECISIONS = ["fp32", "int8", "int4"]


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def sweep_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sweep-cache")


@pytest.fixture(scope="module")
def random_model(tmp_path_factory) -> Path:
    """A second tiny chat model: a randomly initialised (seeded) Qwen2 with the tiny
    model's tokenizer, template and data, smaller again. Its answers are noise, which
    is what a sweep must also report faithfully."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    root = tmp_path_factory.mktemp("random") / "random-chat"
    model_dir = root / "model"
    shutil.copytree(TINY_MODEL.parent / "data", root / "data")
    config = Qwen2Config(
        vocab_size=936,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(model_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        shutil.copy2(TINY_MODEL / name, model_dir / name)
    return model_dir


@pytest.fixture
def ray_session():
    """An embedded Ray (2 CPUs), its files under a short temp folder. Stopped after the
    test that uses it: the cluster test later in this module wants the cores."""
    temp_dir = Path(tempfile.mkdtemp(prefix="slmkray", dir="/tmp"))  # Ray's socket paths must stay short
    session = get_registry().executors["ray"].open(ExecutorOptions(num_cpus=2, temp_dir=temp_dir))
    try:
        yield session
    finally:
        session.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _config(tmp_path: Path, cache: Path, models, **extra):
    data = {
        "models": [str(m) for m in models],
        "precisions": ALL_PRECISIONS,
        "cache_dir": str(cache),
        "output": str(tmp_path),
        "validate": False,
        **extra,
    }
    return config_from_dict(data)


def _deterministic(rows):
    return [{k: row.get(k) for k in DETERMINISTIC_COLUMNS} for row in rows]


# ------------------------------------------------------------------ local vs Ray
@pytest.mark.slow
def test_local_and_embedded_ray_give_the_same_table(tmp_path, sweep_cache, random_model, ray_session):
    local = run_sweep(_config(tmp_path / "local", sweep_cache, [TINY_MODEL, random_model]))
    ray = run_sweep(
        _config(tmp_path / "ray", sweep_cache, [TINY_MODEL, random_model], executor="ray"), session=ray_session
    )

    for result in (local, ray):
        assert result["cells"] == 6 and result["failed"] == 0, [r.get("error") for r in result["rows"]]
        assert {(r["model"], r["precision"]) for r in result["rows"]} == {
            (m, p) for m in ("tiny-chat", "random-chat") for p in ALL_PRECISIONS
        }
        for row in result["rows"]:
            assert row["size_bytes"] > 0 and row["ppl"] > 1 and row["decode_tps"] > 0 and row["node"]
    assert _deterministic(local["rows"]) == _deterministic(ray["rows"])
    # the trained model answers its domain questions at every precision; the random one does not
    by_cell = {(r["model"], r["precision"]): r for r in local["rows"]}
    assert by_cell[("tiny-chat", "fp32")]["accuracy"] >= 0.9
    assert by_cell[("random-chat", "fp32")]["accuracy"] < 0.5
    assert by_cell[("tiny-chat", "int4")]["size_bytes"] < by_cell[("tiny-chat", "int8")]["size_bytes"]
    # each model's source (transformers) is its reference; its fp32 build agrees with it
    assert (
        by_cell[("tiny-chat", "fp32")]["agreement"] == 1.0 and by_cell[("tiny-chat", "int4")]["reference"] == "source"
    )
    assert abs(by_cell[("tiny-chat", "fp32")]["ppl_change_pct"]) < 0.1
    assert set(local["sources"]) == {"tiny-chat", "random-chat"} and local["sources"]["tiny-chat"]["accuracy"] >= 0.9
    assert by_cell[("tiny-chat", "fp32")]["verification"]["status"] == "verified"
    # the Ray cells ran in Ray workers, not in this process
    assert all(r["measure_node"] for r in ray["rows"])
    # the gate picks a cell per model; the table is written in every format
    assert set(local["choices"]) == {"tiny-chat@cpu", "random-chat@cpu"}
    assert local["choices"]["tiny-chat@cpu"]["precision"] in ALL_PRECISIONS
    for kind in ("json", "csv", "markdown"):
        assert Path(local["files"][kind]).is_file()
    assert "tiny-chat" in Path(local["files"]["markdown"]).read_text()


@pytest.mark.slow
def test_quantizer_options_are_a_dimension_of_the_sweep(tmp_path, sweep_cache):
    config = _config(
        tmp_path,
        sweep_cache,
        [TINY_MODEL],
        precisions=["fp32", "int4"],
        quantizers=[{"name": "b32"}, {"name": "b128", "block_size": 128}],
    )
    result = run_sweep(config)

    assert result["failed"] == 0, [r.get("error") for r in result["rows"]]
    cells = {(r["precision"], r["quantizer"]): r for r in result["rows"]}
    # full precision ignores quantizer options: planned once, not once per option set
    assert set(cells) == {("fp32", "none"), ("int4", "b32"), ("int4", "b128")}
    assert cells[("int4", "b128")]["quantization"] == {"block_size": 128}
    # one scale per 128 weights instead of per 32: a smaller build
    assert cells[("int4", "b128")]["size_bytes"] < cells[("int4", "b32")]["size_bytes"]
    assert cells[("int4", "b128")]["agreement"] is not None


# ------------------------------------------------------------------ failures and resume
@pytest.mark.slow
def test_a_failed_cell_is_reported_and_the_sweep_goes_on(tmp_path, sweep_cache):
    broken = tmp_path / "broken-model"
    shutil.copytree(TINY_MODEL, broken)
    config = json.loads((broken / "config.json").read_text())
    config["architectures"] = ["NoSuchModelForCausalLM"]
    (broken / "config.json").write_text(json.dumps(config))

    result = run_sweep(_config(tmp_path / "out", sweep_cache, [broken, TINY_MODEL], precisions=["int4"]))

    assert result["failed"] == 1
    rows = {r["model"]: r for r in result["rows"]}
    assert "NoSuchModelForCausalLM" in rows["broken-model"]["error"]
    assert rows["broken-model"]["state"] == "failed"
    assert rows["tiny-chat"]["state"] == "done" and not rows["tiny-chat"].get("error")
    assert set(read_results(tmp_path / "out")) == {r["cell"] for r in result["rows"]}


@pytest.mark.slow
def test_resume_skips_finished_cells(tmp_path, sweep_cache):
    out = tmp_path / "out"
    first = run_sweep(_config(out, sweep_cache, [TINY_MODEL], precisions=["int8", "int4"]))
    assert first["failed"] == 0
    rows = {r["precision"]: r for r in first["rows"]}
    # the driver "died" before the int8 row was written
    kept = [line for line in (out / RESULTS_FILE).read_text().splitlines() if json.loads(line)["precision"] == "int4"]
    (out / RESULTS_FILE).write_text("\n".join(kept) + "\n")

    second = run_sweep(_config(out, sweep_cache, [TINY_MODEL], precisions=["int8", "int4"]), resume=True)

    assert second["skipped"] == 1 and second["failed"] == 0
    again = {r["precision"]: r for r in second["rows"]}
    assert again["int4"]["measure_seconds"] == rows["int4"]["measure_seconds"]  # the same row, not re-measured
    started = sorted(p.name for p in (out / "started").iterdir())
    assert sum(rows["int4"]["cell"] in name for name in started) == 2  # one build, one measurement: once
    assert sum(rows["int8"]["cell"] in name for name in started) == 4  # twice


def test_bad_sweep_input_fails_before_any_work(tmp_path):
    with pytest.raises(UsageError, match="unknown precision 'int3'"):
        run_sweep(_config(tmp_path, tmp_path, [TINY_MODEL], precisions=["int3"]))
    with pytest.raises(UsageError, match="not a Hugging Face model folder"):
        _config(tmp_path, tmp_path, [tmp_path / "missing"])
    with pytest.raises(UsageError, match="unknown executor 'dask'"):
        run_sweep(_config(tmp_path, tmp_path, [TINY_MODEL], executor="dask"))
    with pytest.raises(UsageError, match="both named 'tiny-chat'"):
        _config(tmp_path, tmp_path, [TINY_MODEL, TINY_MODEL])
    with pytest.raises(UsageError, match="unknown sweep key 'precision'"):
        config_from_dict({"models": [str(TINY_MODEL)], "precision": "int4"})
    with pytest.raises(UsageError, match=r"reference = 'onnx' .*must be source or fp32"):
        config_from_dict({"models": [str(TINY_MODEL)], "reference": "onnx"})
    assert config_from_dict({"models": [str(TINY_MODEL)], "reference": "fp32"}).reference == "fp32"
    assert not (tmp_path / RESULTS_FILE).exists()


# ------------------------------------------------------------------ the command line


@pytest.mark.slow
def test_cli_sweep_file_validates_and_resumes(tmp_path, sweep_cache):
    sweep_file = tmp_path / "SWEEP.toml"
    sweep_file.write_text(
        f'models = ["{TINY_MODEL}"]\nprecisions = ["int4"]\ncache_dir = "{sweep_cache}"\noutput = "out"\n'
        "[validate]\nleak_runs = 10\nsessions = 2\n"
    )

    def slmk(*args):
        return subprocess.run(
            [sys.executable, "-m", "slmk", *args], capture_output=True, text=True, timeout=600, cwd=tmp_path
        )

    first = slmk("sweep", str(sweep_file), "--json")
    assert first.returncode == 0, first.stderr
    data = json.loads(first.stdout)
    (row,) = data["rows"]
    assert row["precision"] == "int4" and row["validation"]["counts"]["pass"] > 0
    assert isinstance(row["validation_ok"], bool)
    assert (tmp_path / "out" / "table.csv").read_text().startswith("model,precision,execution_provider")

    again = slmk("sweep", str(sweep_file), "--resume")
    assert again.returncode == 0, again.stderr
    assert "skipped (--resume)" in again.stderr and "1 resumed" in again.stdout

    installed = slmk("sweep", str(sweep_file), "--resume", "--install-best", "--json")
    assert installed.returncode == 0, installed.stderr
    (entry,) = json.loads(installed.stdout)["installed"]
    assert entry["model"] == "tiny-chat" and entry["installed"].startswith("tiny-chat:")
    assert (Path(entry["path"]) / "genai_config.json").is_file()

    bad = slmk("sweep", str(TINY_MODEL), "--precisions", "int3")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "error: unknown precision 'int3' (precisions: int4, int8, fp16, bf16, fp32)"
    ]
    missing = slmk("sweep", str(tmp_path / "nothing.toml"))
    assert missing.returncode == 2 and "not found" in missing.stderr


# ------------------------------------------------------------------ the step cache across processes
@pytest.mark.slow
def test_two_processes_building_the_same_step_build_it_once(tmp_path, tiny_model_dir):
    cache = tmp_path / "cache"
    code = (
        "import sys; from slmk.app import convert; "
        "r = convert(sys.argv[1], sys.argv[2], precision='int8', cache_dir=sys.argv[3]); "
        "print(r.steps[0].status)"
    )
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tiny_model_dir), str(tmp_path / f"out{i}"), str(cache)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outcomes = [run.communicate(timeout=600) for run in runs]
    assert all(run.returncode == 0 for run in runs), [err for _, err in outcomes]
    assert sorted(out.strip() for out, _ in outcomes) == ["cached", "ran"]
    steps = [p for p in (cache / "steps").iterdir()]
    assert len(steps) == 1 and (steps[0] / "step.json").is_file()


# ------------------------------------------------------------------ the local executor's rules
def record_interval(folder: str, name: str) -> str:
    start = time.monotonic()
    time.sleep(0.3)  # a span other tasks could overlap if the executor let them
    Path(folder, f"{name}.json").write_text(json.dumps([start, time.monotonic()]))
    return name


def die_once(marker: str) -> str:
    if not Path(marker).exists():
        Path(marker).write_text("died")
        os.kill(os.getpid(), signal.SIGKILL)
    return "second attempt"


@pytest.mark.slow
def test_local_workers_run_exclusive_tasks_alone_and_retry_lost_workers(tmp_path):
    session = get_registry().executors["local"].open(ExecutorOptions(workers=2))
    try:
        tasks = [
            Task(name=f"t{i}", function=record_interval, args=(str(tmp_path), f"t{i}"), exclusive=i in (2, 5))
            for i in range(8)
        ]
        results = [session.submit(task).result(timeout=120) for task in tasks]
        retried = session.submit(Task(name="die", function=die_once, args=(str(tmp_path / "marker"),))).result(120)
    finally:
        session.close()
    assert [r.value for r in results] == [f"t{i}" for i in range(8)]
    spans = {f"t{i}": json.loads((tmp_path / f"t{i}.json").read_text()) for i in range(8)}
    for exclusive in ("t2", "t5"):
        start, end = spans[exclusive]
        for name, (other_start, other_end) in spans.items():
            if name != exclusive:
                assert other_end <= start or other_start >= end, f"{name} overlapped the exclusive {exclusive}"
    assert retried.value == "second attempt" and retried.attempts == 2


# ------------------------------------------------------------------ a two-node Ray cluster
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_tree(process: subprocess.Popen) -> None:
    """Kill a process we started and every process below it, by id."""
    import psutil

    try:
        root = psutil.Process(process.pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)


def _wait_for(predicate, what: str, processes=(), timeout: float = 240):
    deadline = time.monotonic() + timeout
    while not predicate():
        for name, process, log in processes:
            assert process.poll() is None, f"{name} exited: {Path(log).read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


@pytest.mark.slow
def test_two_node_cluster_uses_both_nodes_and_survives_losing_one(tmp_path, sweep_cache, random_model):
    ray_bin = Path(sys.executable).with_name("ray")
    temp_dir = Path(tempfile.mkdtemp(prefix="slmkcl", dir="/tmp"))
    hold = tmp_path / "hold"
    port = _free_port()
    env = dict(os.environ)

    def node(name: str, *args: str) -> tuple[str, subprocess.Popen, Path]:
        log = temp_dir / f"{name}.log"
        node_env = {**env, "SLMK_NODE_NAME": name}
        if name == "worker":
            node_env["SLMK_SWEEP_HOLD_FILE"] = str(hold)  # its tasks wait while this file exists
        command = [
            str(ray_bin),
            "start",
            *args,
            "--num-cpus",
            "1",
            "--resources",
            json.dumps({"slmk_measure_slot": 1}),
            "--dashboard-agent-listen-port",
            str(_free_port()),
            "--dashboard-agent-grpc-port",
            str(_free_port()),
            "--metrics-export-port",
            str(_free_port()),
            "--runtime-env-agent-port",
            str(_free_port()),
            "--block",
        ]
        with open(log, "w") as handle:
            process = subprocess.Popen(command, env=node_env, stdout=handle, stderr=subprocess.STDOUT)
        return name, process, log

    started = []
    try:
        head = node(
            "head",
            "--head",
            "--port",
            str(port),
            "--include-dashboard",
            "false",
            "--temp-dir",
            str(temp_dir),
        )
        started.append(head)

        def gcs_up():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False

        _wait_for(gcs_up, "the head node", [head])
        worker = node("worker", "--address", f"127.0.0.1:{port}")
        started.append(worker)
        _wait_for(
            lambda: "block forever" in worker[2].read_text(),
            "the worker node",
            started,
        )

        def sweep(out: Path, address: str) -> subprocess.Popen:
            command = [
                sys.executable,
                "-c",
                "from slmk_measure.sweep_cli import sweep; sweep()",
                str(TINY_MODEL),
                str(random_model),
                "--precisions",
                "fp32,int4",
                "--executor",
                "ray",
                "--address",
                address,
                "--cache-dir",
                str(sweep_cache),
                "--no-validate",
                "-o",
                str(out),
                "--json",
            ]
            return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        # 1. both nodes take tasks (each has one CPU; four cells' builds queue at once)
        # both sweeps join through the GCS address (what `address = "auto"` finds). Not
        # ray://: Ray Client's per-connection server failed to start now and then on
        # two busy cores ("Starting Ray client server failed")
        first = sweep(tmp_path / "first", f"127.0.0.1:{port}")
        stdout, stderr = first.communicate(timeout=600)
        assert first.returncode == 0, stderr[-8000:]
        rows = json.loads(stdout)["rows"]
        nodes = {r["node"] for r in rows} | {r["measure_node"] for r in rows}
        assert nodes == {"head", "worker"}, nodes

        # 2. the worker dies while it surely runs a task: its tasks hold while `hold`
        # exists, so kill it once one of them has started, then let the rest go
        hold.write_text("hold")
        second_out = tmp_path / "second"
        second = sweep(second_out, f"127.0.0.1:{port}")

        def held_on_worker():
            marks = second_out / "started"
            return marks.is_dir() and any(
                json.loads(p.read_text()).get("node") == "worker" for p in marks.glob("*.json")
            )

        _wait_for(held_on_worker, "a task held on the worker", [*started, ("sweep", second, temp_dir / "none")])
        _kill_tree(worker[1])
        started.remove(worker)
        hold.unlink()
        stdout, stderr = second.communicate(timeout=600)
        assert second.returncode == 0, stderr[-3000:]
        result = json.loads(stdout)
        assert result["failed"] == 0 and len(result["rows"]) == 4
        marks = [json.loads(p.read_text()) for p in (second_out / "started").glob("*.json")]
        held = [m for m in marks if m.get("node") == "worker"]
        assert held
        by_cell = {r["cell"]: r for r in result["rows"]}
        for mark in held:  # retried on the node that lived
            assert by_cell[mark["cell"]]["node" if mark["phase"] == "build" else "measure_node"] == "head", mark
        assert _deterministic(result["rows"]) == _deterministic(rows)
        # the shared step cache stayed valid: every step folder is complete
        for step in (sweep_cache / "steps").iterdir():
            assert step.name.startswith(".slmk-tmp-") or (step / "step.json").is_file(), step
    finally:
        for entry in reversed(started):
            _kill_tree(entry[1])
        shutil.rmtree(temp_dir, ignore_errors=True)


# ------------------------------------------------------------------ temporary folders on a shared cache
def test_stale_cleanup_leaves_another_machines_temporary_folders(tmp_path):
    from slmk.fsutil import FOREIGN_TMP_MAX_AGE_S, HOST_TAG, TMP_PREFIX, clean_stale_tmp

    dead_pid = 2**22 + 1  # above Linux's pid_max default: no such process here
    ours = tmp_path / f"{TMP_PREFIX}{dead_pid}@{HOST_TAG}-abcd1234-step"
    theirs = tmp_path / f"{TMP_PREFIX}{dead_pid}@0123beef-abcd1234-step"
    theirs_old = tmp_path / f"{TMP_PREFIX}{dead_pid}@0123beef-dcba4321-step"
    for folder in (ours, theirs, theirs_old):
        folder.mkdir()
    old = time.time() - FOREIGN_TMP_MAX_AGE_S - 60
    os.utime(theirs_old, (old, old))

    clean_stale_tmp(tmp_path)

    # ours was left by a dead process of this machine; theirs may be written right now on
    # another node sharing the cache (its pid means nothing here) unless it is a day old
    assert sorted(p.name for p in tmp_path.iterdir()) == [theirs.name]


def test_ray_resources_publishes_a_measurement_slot_and_only_usable_accelerators(run_slmk):
    done = run_slmk("ray-resources")
    assert done.returncode == 0, done.stderr
    resources = json.loads(done.stdout)
    assert resources["slmk_measure_slot"] == 1.0
    usable = {name for name, ep in get_registry().execution_providers.items() if name != "cpu" and ep.probe().usable}
    assert {name.removeprefix("slmk_") for name in resources if name != "slmk_measure_slot"} == usable


def test_an_adapter_folder_is_swept_merged_into_its_base():
    from slmk_measure.sweep import model_spec

    spec = model_spec("examples/tiny-chat-lora/adapter", REPO)
    assert spec.name == "tiny-chat-lora" and (spec.path / "config.json").is_file()
    assert spec.eval_file == REPO / "examples" / "tiny-chat-lora" / "data" / "eval.jsonl"


RAY_PROBE = """
import json, os, subprocess, sys
from slmk.api import ExecutorOptions, Task
from slmk.api.operations import get_registry
session = get_registry().executors["ray"].open(ExecutorOptions(num_cpus=1))
try:
    worker_home = session.submit(Task(name="home", function=os.getenv, args=("HOME",), num_cpus=1)).result(300).value
    import ray
    session_dir = ray._private.worker._global_node.get_session_dir_path()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
    dashboards = [line for line in ps if "dashboard/dashboard.py" in line and session_dir in line]
finally:
    session.close()
print(json.dumps({"worker_home": worker_home, "session_dir": session_dir, "dashboards": dashboards}))
"""


@pytest.mark.slow
def test_embedded_ray_stays_on_the_machine_and_keeps_its_files_in_slmk_cache(tmp_path):
    """No DNS query (Ray's API server asked the cloud metadata services, metadata.google.internal
    among them; every Ray process routed a socket toward 8.8.8.8:53), no files in /tmp/ray or
    HOME: Ray's session lies in slmk's cache folder, reached through a short link when that
    path is too long for Ray's socket paths. Ray 2.60 always starts its API server process;
    it serves no dashboard (no frontend) and reaches nothing off the machine."""
    from test_no_network import NOT_A_USERS, SYSCALLS, _strace, network_calls

    home, cache = tmp_path / "home", tmp_path / "a-rather-long-folder-name-for-the-cache" / "slmk"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in NOT_A_USERS and not k.startswith("RAY_")}
    env.update(HOME=str(home), SLMK_CACHE_DIR=str(cache))
    env.pop("XDG_CACHE_HOME", None)
    before = set(os.listdir("/tmp/ray")) if os.path.isdir("/tmp/ray") else set()
    trace = tmp_path / "strace.txt"
    done = subprocess.run(
        [_strace(), "-f", "-qq", "-e", "signal=none", "-e", f"trace={SYSCALLS}", "-o", str(trace)]
        + [sys.executable, "-c", RAY_PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    found = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {}
    session_dir = Path(os.path.realpath(found.get("session_dir", "/")))
    link = Path(found.get("session_dir", "/")).parent
    if link.is_symlink():  # the short link to the cache in the temporary folder (the cache path is long)
        link.unlink()
    assert done.returncode == 0, done.stderr[-3000:]
    assert network_calls(trace.read_text(errors="replace")) == []
    assert session_dir.is_relative_to(cache / "ray")
    assert found["worker_home"] == str(home)  # Ray's workers run with the user's HOME
    assert list(home.iterdir()) == []  # no ~/.ray/auth_token, nothing else
    after = set(os.listdir("/tmp/ray")) if os.path.isdir("/tmp/ray") else set()
    assert after - before == set(), "a Ray session appeared in /tmp/ray"
    assert all("--disable-frontend" in line for line in found["dashboards"]), found["dashboards"]
