"""The one atomic file write (slmk.api.atomic_file and its text, bytes and JSON forms)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slmk.api.files import atomic_file, clean_stale_tmp, write_json_atomic, write_text_atomic
from slmk.fsutil import TMP_PREFIX, write_bytes_atomic

#: Each writer rewrites the file this often with its own letter; the file is big enough that a
#: write is many system calls, so a shared temporary name or an in-place write would show.
ROUNDS = 200
SIZE = 256 * 1024

WRITER = """
import sys
from pathlib import Path
from slmk.fsutil import write_bytes_atomic
path, letter, rounds, size = Path(sys.argv[1]), sys.argv[2].encode(), int(sys.argv[3]), int(sys.argv[4])
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()  # both writers start together
for _ in range(rounds):
    write_bytes_atomic(path, letter * size)
"""


@pytest.mark.slow
def test_two_processes_writing_one_path_leave_one_writers_whole_file(tmp_path):
    path = tmp_path / "shared.bin"
    write_bytes_atomic(path, b"0" * SIZE)
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), letter, str(ROUNDS), str(SIZE)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for letter in "AB"
    ]
    for writer in writers:
        assert writer.stdout.readline() == "ready\n"
    for writer in writers:
        writer.stdin.write("go\n")
        writer.stdin.flush()
    seen: set[bytes] = set()
    reads = 0
    while any(writer.poll() is None for writer in writers) or reads == 0:
        data = path.read_bytes()  # never missing: the rename replaces the file in one step
        assert len(data) == SIZE and data == data[:1] * SIZE, f"a mixed or partial file: {data[:1]!r} x {len(data)}"
        seen.add(data[:1])
        reads += 1
    assert [writer.wait(timeout=60) for writer in writers] == [0, 0]
    final = path.read_bytes()
    assert final in (b"A" * SIZE, b"B" * SIZE)
    assert reads > 1 and seen & {b"A", b"B"}, "the reader saw the writers' files"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.bin"], "temporary files were left"


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = write_text_atomic(tmp_path / "report.md", "old\n")
    with pytest.raises(RuntimeError), atomic_file(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("the writer failed")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_the_temporary_name_keeps_the_suffix_and_names_the_writer(tmp_path):
    with atomic_file(tmp_path / "sub" / "plot.png") as tmp:  # a missing parent folder is created
        assert tmp.parent == tmp_path / "sub" and tmp.name.endswith("-plot.png")
        assert tmp.name.startswith(f"{TMP_PREFIX}{os.getpid()}@")
        tmp.write_bytes(b"png")
    assert (tmp_path / "sub" / "plot.png").read_bytes() == b"png"


def test_a_hard_linked_file_is_replaced_not_edited_through_the_link(tmp_path):
    original = write_json_atomic(tmp_path / "genai_config.json", {"a": "é"})
    os.link(original, tmp_path / "shared-copy.json")
    write_json_atomic(original, {"a": 2})
    assert json.loads(original.read_text()) == {"a": 2}
    assert (tmp_path / "shared-copy.json").read_text() == '{\n  "a": "\\u00e9"\n}\n'
    write_json_atomic(original, {"a": "é"}, ensure_ascii=False)
    assert original.read_text(encoding="utf-8") == '{\n  "a": "é"\n}\n'


def test_a_dead_writers_temporary_file_is_cleaned(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    left = tmp_path / f"{TMP_PREFIX}{pid}-1234abcd-results.jsonl"
    left.write_text("half")
    live = tmp_path / f"{TMP_PREFIX}{os.getpid()}-1234abcd-other.jsonl"
    live.write_text("being written")
    clean_stale_tmp(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name]


def test_bytes_and_text_forms_write_what_they_are_given(tmp_path):
    assert write_bytes_atomic(tmp_path / "b", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert Path(write_text_atomic(tmp_path / "t", "ü\n")).read_bytes() == "ü\n".encode()
