"""Atomic folders, locks and fingerprints: nothing half-written under a final name."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import SlmkError, UsageError

TMP_PREFIX = ".slmk-tmp-"
#: This machine in temporary names (``.slmk-tmp-PID@HOST-...``): on a cache shared by
#: several machines a process id means something only on the machine that wrote it.
HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
#: A temporary folder another machine left is removed only when it is this old (seconds).
FOREIGN_TMP_MAX_AGE_S = 24 * 3600


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def fingerprint_tree(path: Path) -> str:
    """A hash of a folder's file names, sizes and modification times, plus the
    content of its small JSON files. Cheap for multi-GB weights, and any edit of a
    weight file changes its size or mtime."""
    digest = hashlib.sha256()
    root = Path(path)
    for file in sorted(p for p in root.rglob("*") if p.is_file() and TMP_PREFIX not in p.name):
        stat = file.stat()
        rel = file.relative_to(root).as_posix()
        digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
        if file.suffix in (".json", ".jinja", ".txt") and stat.st_size < 4_000_000:
            digest.update(file.read_bytes())
    return digest.hexdigest()


def hash_json(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def clean_stale_tmp(parent: Path) -> None:
    """Remove temporary folders left by an interrupted run in ``parent``."""
    if not parent.is_dir():
        return
    for entry in parent.iterdir():
        if entry.name.startswith(TMP_PREFIX):
            pid, _, host = entry.name[len(TMP_PREFIX) :].split("-", 1)[0].partition("@")
            if host and host != HOST_TAG:
                # another machine's: its writer may be alive there; only a day-old one is stale
                try:
                    age = time.time() - entry.stat().st_mtime
                except OSError:
                    continue
                if age < FOREIGN_TMP_MAX_AGE_S:
                    continue
            elif pid.isdigit() and _pid_alive(int(pid)):
                continue  # another live process is writing it
            shutil.rmtree(entry, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


@contextmanager
def atomic_dir(final: Path, force: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final``; rename it into place on success.

    On any exception (Ctrl-C included) the temporary folder is removed and ``final``
    is untouched. With ``force`` an existing ``final`` is replaced only after the new
    one is complete.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and not force:
        raise UsageError(f"{final} already exists", hint="choose another output or pass --force to replace it")
    tmp = final.parent / f"{TMP_PREFIX}{os.getpid()}@{HOST_TAG}-{uuid.uuid4().hex[:8]}-{final.name}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            old = final.parent / f"{TMP_PREFIX}{os.getpid()}@{HOST_TAG}-old-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def link_or_copy_tree(src: Path, dst: Path) -> None:
    """Copy a tree, hard-linking files where the filesystem allows (same device)."""

    def _copy(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=_copy, dirs_exist_ok=True)


@contextmanager
def file_lock(path: Path, what: str = "resource", timeout_s: float = 600.0) -> Iterator[None]:
    """An exclusive advisory lock (fcntl on POSIX, msvcrt on Windows), waiting up to timeout."""
    import time

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                if os.name == "nt":  # pragma: no cover
                    import msvcrt

                    msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
                else:
                    import fcntl

                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SlmkError(
                        f"timed out waiting for the lock on {what} ({path})",
                        hint="another slmk process is using it; wait for it or remove the stale lock file",
                    )
                time.sleep(0.1)
        yield
    finally:
        handle.close()  # closing releases the lock


def cache_root() -> Path:
    """slmk's own cache: $SLMK_CACHE_DIR, else $XDG_CACHE_HOME/slmk, else ~/.cache/slmk."""
    env = os.environ.get("SLMK_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "slmk"
