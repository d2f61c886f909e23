"""The build, the step cache and an installed model share no file (issue #10, point 3).

Users edit a build's genai_config.json by hand (the tutorial does) and files get damaged: neither
may reach the cached step or an install, and a damaged cached step is rebuilt, never reused.
Real conversions with the model builder into a private step cache, real installs, real tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from slmk_build.pipeline import STEP_MARKER, cached_step_problems, step_key

from slmk import app
from slmk.progress import Progress

GREEDY = {"do_sample": False, "max_new_tokens": 8}


class Recorder(Progress):
    def __init__(self) -> None:
        super().__init__(quiet=True)
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)


def digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def step_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("step-cache")


@pytest.fixture(scope="module")
def first(tiny_model_dir, step_cache, tmp_path_factory):
    """One real conversion into a private step cache: (build folder, its cached step folder)."""
    out = tmp_path_factory.mktemp("builds") / "first"
    result = app.convert(tiny_model_dir, out, precision="int4", cache_dir=step_cache)
    [step] = result.steps
    assert step.status == "ran"
    return out, Path(step.path)


def in_place(path: Path, data: bytes) -> None:
    """Write into the existing file (same inode), as an editor saving in place does."""
    with open(path, "r+b") as handle:
        handle.write(data)
        handle.truncate()


def test_cached_steps_are_read_only_with_a_manifest_of_every_file(first):
    build, step = first
    marker = json.loads((step / STEP_MARKER).read_text())
    files = {p.relative_to(step / "model").as_posix(): p for p in (step / "model").rglob("*") if p.is_file()}
    assert set(marker["files"]) == set(files) and "model.onnx.data" in files
    for name, path in files.items():
        assert marker["files"][name]["size"] == path.stat().st_size
        assert marker["files"][name]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert not stat.S_IMODE(path.stat().st_mode) & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH), name
    # the build holds writable copies of its own, not links into the cache
    for name in files:
        built = build / name
        assert not built.is_symlink() and os.stat(built).st_ino != os.stat(files[name]).st_ino
        assert built.stat().st_mode & stat.S_IWUSR
    assert cached_step_problems(step) == []


def test_editing_a_build_in_place_reaches_neither_the_cache_nor_an_install(first, tiny_model_dir, step_cache, tmp_path):
    build, step = first
    cache = tmp_path / "foundry"
    model = app.install(build, "isolated", cache_dir=cache)
    installed_before, cached_before = digests(model.path), digests(step / "model")
    original_config = (build / "genai_config.json").read_bytes()
    config = json.loads(original_config)
    config["search"]["max_length"] = 7
    in_place(build / "genai_config.json", json.dumps(config).encode())
    in_place(build / "model.onnx.data", b"damaged")  # truncated to 7 bytes, in place
    assert digests(model.path) == installed_before
    assert digests(step / "model") == cached_before
    # a later convert reuses the (untouched) cached step and gets the original files, not the edit
    again = app.convert(tiny_model_dir, tmp_path / "again", precision="int4", cache_dir=step_cache)
    assert [s.status for s in again.steps] == ["cached"]
    assert (tmp_path / "again" / "genai_config.json").read_bytes() == original_config
    assert digests(tmp_path / "again")["model.onnx.data"] == cached_before["model.onnx.data"]
    # and the install still loads and generates real tokens
    with app.open_session(model.path, runtime="ortgenai") as session:
        answer = "".join(session.generate([{"role": "user", "content": "What is Veltra?"}], **GREEDY))
    assert session.last_stats.generated_tokens > 0 and answer


def test_a_damaged_cached_step_is_rebuilt_not_reused(first, tiny_model_dir, step_cache, tmp_path):
    _, step = first
    data = step / "model" / "model.onnx.data"
    good = hashlib.sha256(data.read_bytes()).hexdigest()
    os.chmod(data, 0o644)  # the entry is read-only: damage it the way a careless root would
    with open(data, "r+b") as handle:  # same size, one byte changed: only the hash can tell
        first_byte = handle.read(1)
        handle.seek(0)
        handle.write(bytes([first_byte[0] ^ 0xFF]))
    assert cached_step_problems(step) == ["model.onnx.data was changed"]
    progress = Recorder()
    result = app.convert(
        tiny_model_dir, tmp_path / "rebuilt", precision="int4", cache_dir=step_cache, progress=progress
    )
    assert [s.status for s in result.steps] == ["ran"]
    assert any("not reusing" in line and "model.onnx.data was changed" in line for line in progress.lines)
    assert hashlib.sha256(data.read_bytes()).hexdigest() == good  # the rebuilt entry is whole again
    assert hashlib.sha256((tmp_path / "rebuilt" / "model.onnx.data").read_bytes()).hexdigest() == good


def test_a_cached_step_missing_a_file_or_its_manifest_is_not_reused(first):
    _, step = first
    marker = json.loads((step / STEP_MARKER).read_text())
    assert cached_step_problems(step) == []
    missing = step / "model" / "tokenizer.json"
    saved = missing.read_bytes()
    missing.unlink()
    try:
        assert cached_step_problems(step) == ["tokenizer.json is missing"]
    finally:
        missing.write_bytes(saved)
    assert cached_step_problems(step) == []
    old_format = {k: v for k, v in marker.items() if k not in ("files", "format")}
    (step / STEP_MARKER).write_text(json.dumps(old_format))
    try:
        assert cached_step_problems(step) and "no file manifest" in cached_step_problems(step)[0]
    finally:
        (step / STEP_MARKER).write_text(json.dumps(marker))


def test_the_step_key_includes_trust_remote_code(tiny_model_dir):
    from slmk.api import ConvertRequest, ModelInfo
    from slmk.api.operations import get_registry, make_plan, resolve_ep

    registry = get_registry()
    ep = resolve_ep(registry, "cpu")
    [step] = make_plan(registry, ModelInfo.load(tiny_model_dir), ep, ConvertRequest(tiny_model_dir)).steps
    keys = {trust: step_key(registry, step, "fingerprint", ep, None, trust) for trust in (False, True)}
    assert keys[False] != keys[True]


@pytest.mark.parametrize("entry", [5, None, ["size", 1], {"size": "12", "sha256": "x"}, {"size": 1, "sha256": 7}])
def test_a_step_json_entry_of_the_wrong_type_is_a_damaged_step_and_rebuilt(
    first, tiny_model_dir, step_cache, tmp_path, entry
):
    _, step = first
    marker_path = step / STEP_MARKER
    good = marker_path.read_text()
    marker = json.loads(good)
    marker["files"]["tokenizer.json"] = entry
    os.chmod(marker_path, 0o644)
    marker_path.write_text(json.dumps(marker))
    assert cached_step_problems(step) == [f"{STEP_MARKER} has a damaged entry for 'tokenizer.json'"]
    result = app.convert(tiny_model_dir, tmp_path / "rebuilt", precision="int4", cache_dir=step_cache)
    assert [s.status for s in result.steps] == ["ran"]
    assert cached_step_problems(step) == [] and json.loads(marker_path.read_text()) == json.loads(good)
