"""Hardening, second round (issue #19, points 2, 3, 4 and 5-olive): folder shapes, the typed
genai_config.json reader, bounded slmk.toml and sweep values, and consent before Olive reads a pickle.

Commands run through the real `slmk` entry point in a subprocess against real builds of the
tiny model; every refusal is one line on stderr, exit 1 or 2, never 3 and never a traceback.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path

import pytest
from slmk_measure import sweep
from slmk_olive.quantize import check_pickles
from slmk_ortgenai.session_options import parse_session_options

from slmk import fsutil
from slmk.config import load_settings
from slmk.errors import ConfigError, UsageError
from slmk.genai_format import MAX_SESSION_THREADS, build_problems, search_defaults

REPO = Path(__file__).resolve().parent.parent
TINY_MODEL = REPO / "examples" / "tiny-chat" / "model"


def one_error_line(done) -> str:
    """The command failed with exit 1 or 2 and exactly one `error: ...` line, no traceback."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode in (1, 2), done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-3000:]
    return lines[0]


@pytest.fixture
def nest():
    """nest(folder, depth): ``depth`` folders one inside the other under ``folder`` (made with relative
    paths, so any depth works), deleted after the test with slmk's own remove_tree: pytest's
    cleanup of its temporary folders recurses once per level and would fail on them."""
    made: list[Path] = []

    def make(folder: Path, depth: int, name: str = "d") -> Path:
        here = os.getcwd()
        os.chdir(folder)
        try:
            for _ in range(depth):
                os.mkdir(name)
                os.chdir(name)
        finally:
            os.chdir(here)
        made.append(folder / name)
        return folder

    yield make
    for top in made:
        fsutil.remove_tree(top)
    assert not any(top.exists() for top in made)


@pytest.fixture(scope="module")
def build(tiny_build) -> Path:
    return tiny_build("int4")


@pytest.fixture
def copy_of_build(build, tmp_path) -> Path:
    folder = tmp_path / "build"
    shutil.copytree(build, folder)
    return folder


def listed(run_slmk, cache: Path) -> list[dict]:
    done = run_slmk("list", "--json", "--cache-dir", str(cache), timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


# ------------------------------------------------------------------ 2. folder shapes
def test_walks_are_bounded_and_iterative(tmp_path, monkeypatch, nest):
    deep = tmp_path / "deep"
    deep.mkdir()
    nest(deep, 1500)
    for walk in (fsutil.dir_size, fsutil.fingerprint_tree, fsutil.tree_entries):
        with pytest.raises(UsageError, match=f"nested more than {fsutil.MAX_TREE_DEPTH} folders deep"):
            walk(deep)
    wide = tmp_path / "wide"
    wide.mkdir()
    for number in range(12):
        (wide / f"f{number}").write_text("x")
    monkeypatch.setattr(fsutil, "MAX_TREE_ENTRIES", 10)
    with pytest.raises(UsageError, match="more than 10 files and folders"):
        fsutil.dir_size(wide)
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / os.fsdecode(b"\xff-weights.bin")).write_text("x")
    with pytest.raises(UsageError, match=r"\\xff-weights.bin\) has a name that is not UTF-8"):
        fsutil.tree_entries(odd)
    long = tmp_path / "long"
    (long / ("x" * 250) / ("y" * 250) / ("z" * 250) / ("w" * 250)).mkdir(parents=True)
    (long / ("x" * 250) / ("y" * 250) / ("z" * 250) / ("w" * 250) / ("v" * 100)).write_text("x")
    with pytest.raises(UsageError, match=f"is a path longer than {fsutil.MAX_RELATIVE_PATH_BYTES} bytes"):
        fsutil.copy_tree(long, tmp_path / "copy")
    assert not (tmp_path / "copy").exists()


def test_remove_tree_deletes_a_tree_deeper_than_the_recursion_limit(tmp_path, nest):
    root = tmp_path / "deep"
    root.mkdir()
    nest(root, sys.getrecursionlimit() + 500)
    (tmp_path / "kept").write_text("outside")
    fsutil.remove_tree(root)
    assert not root.exists() and (tmp_path / "kept").read_text() == "outside"


@pytest.mark.slow
def test_a_deeply_nested_build_is_refused_before_anything_is_installed(run_slmk, copy_of_build, tmp_path, nest):
    nest(copy_of_build, 1500)
    cache = tmp_path / "cache"
    done = run_slmk("-q", "install", str(copy_of_build), "--name", "deep", "--cache-dir", str(cache), timeout=120)
    assert "nested more than" in one_error_line(done)
    assert listed(run_slmk, cache) == []
    assert not (cache / "slmk").exists() or [p.name for p in (cache / "slmk").iterdir()] == [".slmk-install.lock"]


@pytest.mark.slow
@pytest.mark.parametrize("command", ["install", "convert"])
def test_a_file_name_that_is_not_utf8_is_refused_in_one_line(run_slmk, copy_of_build, tmp_path, command):
    if command == "install":
        folder, args = copy_of_build, ["--name", "odd", "--cache-dir", str(tmp_path / "cache")]
    else:
        folder = tmp_path / "model"
        shutil.copytree(TINY_MODEL, folder)
        args = ["-o", str(tmp_path / "out")]
    with open(os.fsencode(folder) + b"/notes-\xe9\xff.txt", "wb") as handle:
        handle.write(b"hello")
    done = run_slmk("-q", command, str(folder), *args, timeout=300)
    assert "has a name that is not UTF-8" in one_error_line(done)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_converting_a_model_folder_nested_1100_deep_is_refused_before_converting(run_slmk, tmp_path, nest):
    model = tmp_path / "model"
    shutil.copytree(TINY_MODEL, model)
    nest(model, 1100)
    done = run_slmk("-q", "convert", str(model), "-o", str(tmp_path / "out"), timeout=300)
    assert "nested more than" in one_error_line(done)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_damaged_cache_entry_never_breaks_list_run_or_remove_of_the_others(run_slmk, build, tmp_path, nest):
    cache = tmp_path / "cache"
    done = run_slmk("-q", "install", str(build), "--name", "good", "--cache-dir", str(cache), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    # an entry slmk would never write (an older slmk or a hand-made copy): 1,500 folders deep
    good_dir = next((cache / "slmk").glob("good-*"))
    bad_dir = good_dir.with_name("bad-generic-cpu-1")
    shutil.copytree(good_dir, bad_dir)
    record_path = bad_dir / "v1" / "slmk_install.json"
    record = json.loads(record_path.read_text())
    record.update(name="bad", legacy_name="bad", foundry_id="bad-generic-cpu:1")
    record_path.write_text(json.dumps(record))
    nest(bad_dir / "v1", 1500)

    rows = {row["name"]: row for row in listed(run_slmk, cache)}
    assert rows["bad"]["state"].startswith("damaged") and rows["bad"]["runtimes"] == []
    assert rows["good"]["state"] == "ok" and rows["good"]["runtimes"]
    ran = run_slmk(
        "-q", "run", "good", "--cache-dir", str(cache), "--runtime", "ortgenai", "--prompt", "hi",
        "--max-new-tokens", "3", timeout=300,
    )  # fmt: skip
    assert ran.returncode == 0 and ran.stdout.strip(), ran.stderr[-2000:]
    removed = run_slmk("-q", "remove", "bad", "--cache-dir", str(cache), timeout=120)
    assert removed.returncode == 0, removed.stderr[-2000:]
    assert not bad_dir.exists()
    assert [row["name"] for row in listed(run_slmk, cache)] == ["good"]


# ------------------------------------------------------------------ 3. genai_config.json
def _edit(config: dict, path: str, value) -> None:
    *parents, leaf = path.split(".")
    for key in parents:
        config = config[key]
    config[leaf] = value


#: genai_config.json edits the runtime cannot load, and what the one line says.
BAD_CONFIGS = {
    "filename-list": ("model.decoder.filename", ["model.onnx"], "model.decoder.filename is a list"),
    "filename-number": ("model.decoder.filename", 5, "model.decoder.filename is a number"),
    "filename-object": ("model.decoder.filename", {"a": 1}, "model.decoder.filename is an object"),
    "decoder-list": ("model.decoder", [1], "model.decoder is a list, not an object"),
    "search-list": ("search", [1], "search is a list, not an object"),
    "context-string": ("model.context_length", "512", 'model.context_length = "512" is not an integer'),
    "max-length-huge": ("search.max_length", 1e12, "search.max_length = 1000000000000.0 is not an integer"),
    "max-length-over-context": ("search.max_length", 4096, "larger than model.context_length"),
    "top-k-huge": ("search.top_k", 10**13, "search.top_k = 10000000000000 is out of range"),
    "temperature-nan": ("search.temperature", math.nan, "search.temperature = nan is not a finite number"),
    "eos-outside-vocabulary": ("model.eos_token_id", 100000, "model.eos_token_id = 100000 is out of range"),
    "eos-list-outside": ("model.eos_token_id", [2, -1], "model.eos_token_id = -1 is out of range"),
    "filename-absolute": ("model.decoder.filename", "/etc/passwd", "is an absolute path"),
    "filename-leaves": ("model.decoder.filename", "../other-build/model.onnx", "leaves the build folder"),
    "threads-100000": (
        "model.decoder.session_options.intra_op_num_threads",
        100000,
        f"intra_op_num_threads = 100000 is out of range [0, {MAX_SESSION_THREADS}]",
    ),
    "session-options-string": ("model.decoder.session_options", "fast", "session_options is a string"),
}


def _bad_config_build(folder: Path, kind: str) -> str:
    path, value, expected = BAD_CONFIGS[kind]
    config = json.loads((folder / "genai_config.json").read_text())
    _edit(config, path, value)
    (folder / "genai_config.json").write_text(json.dumps(config))
    return expected


@pytest.mark.parametrize("kind", sorted(BAD_CONFIGS))
def test_the_typed_reader_refuses_each_config_the_runtime_cannot_load(copy_of_build, kind):
    expected = _bad_config_build(copy_of_build, kind)
    problems = build_problems(copy_of_build)
    assert any(expected in problem for problem in problems), problems


def test_the_typed_reader_passes_a_real_build_and_checks_the_tokenizer(copy_of_build):
    assert build_problems(copy_of_build) == []
    (copy_of_build / "tokenizer.json").write_text("[1, 2]")
    assert build_problems(copy_of_build) == ["tokenizer.json is not a tokenizer (a JSON object with a model section)"]
    assert build_problems(copy_of_build, tokenizer=False) == []


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["decoder-list", "filename-leaves", "context-string", "threads-100000", "tokenizer"])
def test_install_and_run_refuse_a_build_that_cannot_load_in_one_line(run_slmk, copy_of_build, tmp_path, kind):
    if kind == "tokenizer":
        (copy_of_build / "tokenizer.json").write_text("[1, 2]")
        expected = "tokenizer.json is not a tokenizer"
    else:
        expected = _bad_config_build(copy_of_build, kind)
    cache = tmp_path / "cache"
    done = run_slmk("-q", "install", str(copy_of_build), "--name", "bad", "--cache-dir", str(cache), timeout=120)
    line = one_error_line(done)
    assert expected in line and "disk space" not in line, line
    assert listed(run_slmk, cache) == []
    done = run_slmk("-q", "run", str(copy_of_build), "--prompt", "hi", "--max-new-tokens", "3", timeout=120)
    assert expected in one_error_line(done)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["bench", "validate", "tune", "serve"])
def test_every_command_that_loads_a_build_refuses_a_wrong_type_in_one_line(run_slmk, copy_of_build, command):
    expected = _bad_config_build(copy_of_build, "search-list")
    extra = ["--port", "0"] if command == "serve" else []
    done = run_slmk("-q", command, str(copy_of_build), *extra, timeout=120)
    assert expected in one_error_line(done)


@pytest.mark.slow
def test_list_never_shows_a_build_the_runtime_cannot_load_as_runnable(run_slmk, build, tmp_path):
    cache = tmp_path / "cache"
    done = run_slmk("-q", "install", str(build), "--name", "tiny", "--cache-dir", str(cache), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    leaf = next((cache / "slmk").glob("tiny-*/v1"))
    record = json.loads((leaf / "slmk_install.json").read_text())
    del record["files"]  # as an older slmk recorded it: no sizes to compare
    (leaf / "slmk_install.json").write_text(json.dumps(record))
    config = json.loads((leaf / "genai_config.json").read_text())
    config["model"]["context_length"] = "512"
    (leaf / "genai_config.json").write_text(json.dumps(config))
    (row,) = listed(run_slmk, cache)
    assert row["state"].startswith("damaged") and "context_length" in row["state"]
    assert row["runtimes"] == []


def test_generation_values_are_bounded_in_slmk_toml_and_in_generation_config(tmp_path):
    config = tmp_path / "slmk.toml"
    config.write_text("[generation]\ntop_k = 1e13\n")
    with pytest.raises(ConfigError, match=r"generation.top_k = 10000000000000 .* is out of range"):
        load_settings(config_path=config, environ={})
    config.write_text("[generation]\nmax_length = 100000000000\n")
    with pytest.raises(ConfigError, match=r"generation.max_length"):
        load_settings(config_path=config, environ={})
    # a model's generation_config.json never carries an unbounded value into a build
    with pytest.raises(UsageError, match=r"generation_config.json: top_k = 10000000000000 is out of range"):
        search_defaults({"top_k": 1e13}, 512)
    with pytest.raises(UsageError, match=r"generation_config.json: temperature"):
        search_defaults({"temperature": "hot"}, 512)
    assert search_defaults({"top_k": 50.0, "max_length": 2048, "temperature": 0.7}, 512) == {
        "top_k": 50,
        "max_length": 512,
        "temperature": 0.7,
    }
    with pytest.raises(UsageError, match=f"positive whole number up to {MAX_SESSION_THREADS}"):
        parse_session_options({"intra_op_num_threads": "100000"})


# ------------------------------------------------------------------ 4. sweep files
#: Sweep file contents and what the one line names.
BAD_SWEEPS = {
    "install-best-string": ('install_best = "no"', "install_best = 'no'"),
    "workers-string": ('[executor]\nworkers = "abc"', "executor.workers = 'abc'"),
    "workers-zero": ("[executor]\nworkers = 0", "executor.workers = 0 from"),
    "retries-string": ('[resources]\nretries = "x"', "resources.retries = 'x'"),
    "build-cpus-table": ("[resources]\nbuild_cpus = {a = 1}", "resources.build_cpus = {'a': 1}"),
    "build-cpus-nan": ("[resources]\nbuild_cpus = nan", "resources.build_cpus = nan"),
    "temp-dir-number": ("[executor]\ntemp_dir = 5", "executor.temp_dir = 5"),
    "executor-unknown": ("[executor]\nworker = 2", "unknown key 'executor.worker'"),
    "bench-unknown": ("[bench]\nrepeat = 2", "unknown key 'bench.repeat'"),
    "bench-lengths": ('[bench]\nlengths = ["16"]', "bench.lengths = ['16']"),
    "validate-unknown": ("[validate]\nleak_run = 5", "unknown key 'validate.leak_run'"),
    "validate-string": ('[validate]\nsessions = "3"', "validate.sessions = '3'"),
    "model-path-number": ("", "path = 5 is not a string"),
}


@pytest.mark.parametrize("kind", sorted(BAD_SWEEPS))
def test_each_sweep_value_is_typed_and_checked_up_front(tmp_path, kind):
    body, expected = BAD_SWEEPS[kind]
    file = tmp_path / "SWEEP.toml"
    models = "[{path = 5}]" if kind == "model-path-number" else f'["{TINY_MODEL}"]'
    file.write_text(f"models = {models}\n{body}\n")
    with pytest.raises(UsageError) as caught:
        sweep.load_config(file)
    assert expected in caught.value.message, caught.value.message
    assert str(file) in caught.value.message or kind == "model-path-number", caught.value.message


def test_a_sweep_file_that_is_not_utf8_and_cli_overrides_go_through_the_schema(tmp_path):
    file = tmp_path / "SWEEP.toml"
    file.write_bytes(b'models = ["\xff"]\n')
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        sweep.load_config(file)
    file.write_text(f'models = ["{TINY_MODEL}"]\n[executor]\nname = "local"\nworkers = 2\n')
    config = sweep.load_config(file, {"install_best": True}, executor={"workers": 3})
    assert config.install_best is True and config.executor_options.workers == 3
    with pytest.raises(UsageError, match=r"executor.workers = 'x'"):
        sweep.load_config(file, executor={"workers": "x"})


@pytest.mark.slow
def test_slmk_sweep_refuses_a_bad_sweep_file_in_one_line(run_slmk, tmp_path):
    file = tmp_path / "SWEEP.toml"
    file.write_text(f'models = ["{TINY_MODEL}"]\ninstall_best = "no"\n')
    assert "install_best = 'no'" in one_error_line(run_slmk("sweep", str(file), timeout=120))
    file.write_bytes(b'models = ["\xff\xfe"]\n')
    assert "is not UTF-8 text" in one_error_line(run_slmk("sweep", str(file), "--workers", "2", timeout=120))


def test_resume_names_the_damaged_line_of_results_jsonl(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / sweep.RESULTS_FILE).write_text('{"cell": "a", "ppl": 1}\n{"cell": ["not", "a", "name"]}\n')
    with pytest.raises(UsageError, match=r"results.jsonl line 2 is not a result row"):
        sweep.read_results(out)
    (out / sweep.RESULTS_FILE).write_bytes(b'{"cell": "a"}\n\xff\n')
    with pytest.raises(UsageError, match="is not UTF-8 text"):
        sweep.read_results(out)
    (out / sweep.RESULTS_FILE).write_text('{"cell": "a", "ppl": 1}\n\n')
    assert sweep.read_results(out) == {"a": {"cell": "a", "ppl": 1}}


def test_a_results_path_that_is_a_folder_is_refused_before_any_cell(tmp_path):
    out = tmp_path / "out"
    (out / sweep.RESULTS_FILE).mkdir(parents=True)
    config = sweep.config_from_dict({"models": [str(TINY_MODEL)], "output": str(out), "validate": False})
    with pytest.raises(UsageError, match=r"results.jsonl is not a file"):
        sweep.run_sweep(config)
    as_file = tmp_path / "a-file"
    as_file.write_text("x")
    config = sweep.config_from_dict({"models": [str(TINY_MODEL)], "output": str(as_file), "validate": False})
    with pytest.raises(UsageError, match="is not a folder"):
        sweep.run_sweep(config)


# ------------------------------------------------------------------ 5. consent before Olive reads a pickle
def _pickled_model(tmp_path: Path) -> Path:
    import torch
    from safetensors.torch import load_file

    model = tmp_path / "pickled"
    shutil.copytree(TINY_MODEL, model)
    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    return model


def test_olive_quantizers_ask_for_consent_before_reading_a_pickle(tmp_path):
    model = _pickled_model(tmp_path)
    with pytest.raises(UsageError, match=r"which Olive would load.*--allow-pickle"):
        check_pickles(model, {})
    with pytest.raises(UsageError, match="not a boolean"):
        check_pickles(model, {"allow_pickle": "maybe"})
    check_pickles(model, {"allow_pickle": True})
    check_pickles(model, {"allow_pickle": "true"})
    check_pickles(TINY_MODEL, {})  # safetensors: nothing to consent to


@pytest.mark.slow
def test_convert_via_olive_of_a_pickle_only_folder_needs_allow_pickle(run_slmk, tmp_path):
    model = _pickled_model(tmp_path)
    done = run_slmk("-q", "convert", str(model), "-p", "int4", "--via", "olive", "-o", str(tmp_path / "out"))
    assert "which Olive would load" in one_error_line(done)
    assert not (tmp_path / "out").exists()
    # the one --allow-pickle flag reaches every step that reads the source (the olive quantizer too)
    plan = run_slmk("convert", str(model), "-p", "int4", "--via", "olive", "--allow-pickle", "--plan", "--json")
    assert plan.returncode == 0, plan.stderr[-2000:]
    steps = {step["plugin"]: step["options"] for step in json.loads(plan.stdout)["steps"]}
    assert steps["olive"]["allow_pickle"] is True and steps["ortgenai"]["allow_pickle"] is True
