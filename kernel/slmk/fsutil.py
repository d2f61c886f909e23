"""Atomic files and folders, locks and fingerprints: nothing half-written under a final name."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import socket
import stat
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from .errors import SlmkError, UsageError

TMP_PREFIX = ".slmk-tmp-"
#: This machine in temporary names (``.slmk-tmp-PID@HOST-...``): on a cache shared by
#: several machines a process id means something only on the machine that wrote it.
HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
#: A temporary folder another machine left is removed only when it is this old (seconds).
FOREIGN_TMP_MAX_AGE_S = 24 * 3600


#: Shape limits of any folder slmk walks (a model, a build, an install): a deeper tree, more
#: entries, or a name that is not UTF-8 is refused in one line before anything is read or copied.
#: Real model folders are one or two levels deep with tens of files; the limits bound the walk
#: itself (memory, time, path length), whatever the folder holds.
MAX_TREE_DEPTH = 32
MAX_TREE_ENTRIES = 100_000
#: Bytes of a path inside the folder: with the folder's own path it must stay within PATH_MAX (4096).
MAX_RELATIVE_PATH_BYTES = 1024
_SHAPE_HINT = "a model folder is a few levels deep with at most {entries:,} entries, short names, all UTF-8"


def shown_path(path: str | os.PathLike) -> str:
    """A path as printable text, even when its bytes are not UTF-8 (shown as \\xNN escapes)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _start_of(rel: Path) -> str:
    text = shown_path(rel)
    return text if len(text) <= 60 else f"{text[:60]}..."


def walk_tree(root: Path) -> Iterator[tuple[Path, os.DirEntry]]:
    """Every entry under ``root`` as (relative path, entry), parents before children, sorted by name.

    Iterative (no recursion, whatever the depth), never following links to folders, and
    bounded: more than ``MAX_TREE_DEPTH`` levels, more than ``MAX_TREE_ENTRIES`` entries or a
    name that is not UTF-8 raise a UsageError naming the path, before anything below it is read.
    """
    root = Path(root)
    hint = _SHAPE_HINT.format(entries=MAX_TREE_ENTRIES)
    pending: list[tuple[Path, int]] = [(Path(), 0)]
    count = 0
    while pending:
        rel, depth = pending.pop()
        entries = []
        with os.scandir(root / rel) as scan:
            for entry in scan:
                count += 1
                if count > MAX_TREE_ENTRIES:
                    raise UsageError(
                        f"{shown_path(root)} holds more than {MAX_TREE_ENTRIES:,} files and folders", hint=hint
                    )
                entries.append(entry)
        children = []
        for entry in sorted(entries, key=lambda e: e.name):
            where = f"{shown_path(root)} ({_start_of(rel / entry.name)})"
            try:
                entry_bytes = len(f"{rel}/{entry.name}".encode())
            except UnicodeEncodeError:
                raise UsageError(f"{where} has a name that is not UTF-8", hint="rename it") from None
            if entry_bytes > MAX_RELATIVE_PATH_BYTES:
                raise UsageError(f"{where} is a path longer than {MAX_RELATIVE_PATH_BYTES} bytes", hint=hint)
            if entry.is_dir(follow_symlinks=False):
                if depth + 1 > MAX_TREE_DEPTH:
                    raise UsageError(f"{where} is nested more than {MAX_TREE_DEPTH} folders deep", hint=hint)
                children.append((rel / entry.name, depth + 1))
            yield rel / entry.name, entry
        pending.extend(reversed(children))


def _regular_files(root: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """(relative path, stat) of every regular file under ``root``, links to files followed."""
    for rel, entry in walk_tree(root):
        try:
            if entry.is_file():
                yield rel, entry.stat()
        except OSError:
            continue  # a dangling link: no content


def dir_size(path: Path) -> int:
    """Bytes of every file under ``path`` (a bounded walk: see ``walk_tree``)."""
    return sum(info.st_size for _, info in _regular_files(Path(path)))


def fingerprint_tree(path: Path) -> str:
    """A hash of a folder's file names, sizes and modification times, plus the
    content of its small JSON files. Cheap for multi-GB weights, and any edit of a
    weight file changes its size or mtime."""
    digest = hashlib.sha256()
    root = Path(path)
    for rel_path, info in sorted(_regular_files(root), key=lambda item: item[0]):
        if TMP_PREFIX in rel_path.name:
            continue
        rel = rel_path.as_posix()
        digest.update(f"{rel}\0{info.st_size}\0{info.st_mtime_ns}\0".encode())
        if rel_path.suffix in (".json", ".jinja", ".txt") and info.st_size < 4_000_000:
            digest.update((root / rel_path).read_bytes())
    return digest.hexdigest()


def hash_json(value: object) -> str:
    """sha256 of a value's canonical JSON: stable keys for caches."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def temp_path(final: Path, kind: str = "") -> Path:
    """A unique temporary name beside ``final``: this process, this machine, ``kind``, a random part,
    and ``final``'s name last (so the suffix a tool infers the format from stays).

    ``clean_stale_tmp`` removes it once its process is gone; rename it to ``final`` when complete."""
    tag = f"{kind}-" if kind else ""
    return final.parent / f"{TMP_PREFIX}{os.getpid()}@{HOST_TAG}-{tag}{uuid.uuid4().hex[:8]}-{final.name}"


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a temporary name (``temp_path``, ``atomic_dir``, ``atomic_file``): not a result yet."""
    return name.startswith(TMP_PREFIX)


def clean_stale_tmp(parent: Path) -> None:
    """Remove temporary folders and files left by an interrupted run in ``parent``."""
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
            if entry.is_dir() and not entry.is_symlink():
                remove_tree(entry)
            else:
                with suppress(OSError):
                    entry.unlink()


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
    tmp = temp_path(final)
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            old = temp_path(final, "old")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final`` to write (by hand or by a tool); on success it is
    flushed to disk and renamed over ``final``, and the rename itself is made durable.

    The one way slmk writes a file: a reader sees the old file or the new one, never half of
    one, whatever crashes; two writers of one path never share a temporary name (pid, machine
    and a random part are in it), so the last rename wins with a complete file. A file that
    shares a hard link is replaced, not edited through the link. On any exception (Ctrl-C
    included) the temporary file is removed and ``final`` is untouched. Missing parent folders
    are created.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(final)
    try:
        yield tmp
        _fsync_path(tmp, os.O_RDWR)
        os.replace(tmp, final)
    except BaseException:
        with suppress(OSError):
            tmp.unlink()
        raise
    if os.name != "nt":  # a folder cannot be opened for fsync on Windows
        _fsync_path(final.parent, os.O_RDONLY)


def _fsync_path(path: Path, flags: int) -> None:
    try:
        fd = os.open(path, flags)
    except IsADirectoryError:  # a tool wrote a folder: its files are its own business
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems refuse fsync on a folder; the rename still happened
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through ``atomic_file``; returns the path."""
    path = Path(path)
    with atomic_file(path) as tmp, open(tmp, "xb") as handle:
        handle.write(data)
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` through ``atomic_file``; returns the path."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, data: Any, *, ensure_ascii: bool = True) -> Path:
    """Write ``data`` as indented JSON (one trailing newline) through ``atomic_file``."""
    return write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=ensure_ascii) + "\n")


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def tree_entries(src: Path) -> list[tuple[Path, Path | None]]:
    """Every entry of ``src`` as (relative path, regular file to read, or None for a folder).

    Walks with ``walk_tree`` (bounded depth, entry count and UTF-8 names) without following
    symbolic links and opens nothing, so a link to ``/`` or a FIFO (``/proc/kmsg`` blocks
    whoever reads it) is never read.
    A link to a regular file inside ``src`` stands for that file; any other link (to
    somewhere outside ``src``, to a folder, dangling) and any special file (FIFO,
    device, socket) is refused with one line naming it, before anything is copied.
    """
    root = Path(src)
    root_real = os.path.realpath(root)
    hint = "slmk copies only regular files that lie inside the folder: replace the link with the file itself"
    found: list[tuple[Path, Path | None]] = []
    for entry_rel, entry in walk_tree(root):
        where = shown_path(entry.path)
        if entry.is_symlink():
            target = os.path.realpath(entry.path)
            if not _inside(target, root_real):
                raise UsageError(f"{where} is a symbolic link to {shown_path(target)}, outside {root}", hint=hint)
            try:
                mode = os.stat(target).st_mode  # stat opens nothing
            except OSError:
                raise UsageError(f"{where} is a dangling symbolic link", hint=hint) from None
            if not stat.S_ISREG(mode):
                raise UsageError(f"{where} is a symbolic link to a folder or special file", hint=hint)
            found.append((entry_rel, Path(target)))
        elif entry.is_dir(follow_symlinks=False):
            found.append((entry_rel, None))
        elif entry.is_file(follow_symlinks=False):
            found.append((entry_rel, Path(entry.path)))
        else:
            raise UsageError(
                f"{where} is a special file (FIFO, device or socket), not a model file",
                hint="remove it from the folder",
            )
    return found


def remove_tree(path: Path) -> None:
    """Delete a folder and everything in it, as far as possible, ignoring errors
    (``shutil.rmtree(path, ignore_errors=True)``), at any depth.

    shutil.rmtree recurses once per level: a tree nested deeper than Python's recursion
    limit (one a hand-made or older install left) raises RecursionError. Such a tree is
    deleted level by level through folder descriptors instead, never following a link,
    and never holding more than two descriptors open.
    """
    try:
        shutil.rmtree(path, ignore_errors=True)
        return
    except RecursionError:
        pass
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    names: list[str] = []  # the folders descended into, from ``path`` down
    try:
        while True:
            with os.scandir(fd) as scan:
                entries = list(scan)
            child = next((e.name for e in entries if e.is_dir(follow_symlinks=False)), None)
            for entry in entries:
                if not entry.is_dir(follow_symlinks=False):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.name, dir_fd=fd)
            if child is not None:
                try:
                    child_fd = os.open(child, flags, dir_fd=fd)
                except OSError:
                    return
                os.close(fd)
                fd, names = child_fd, [*names, child]
                continue
            if not names:
                break
            parent_fd = os.open("..", flags, dir_fd=fd)
            os.close(fd)
            fd = parent_fd
            try:
                os.rmdir(names.pop(), dir_fd=fd)
            except OSError:
                return  # cannot delete it (permissions): give up, as ignore_errors does
    except OSError:
        return
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    with contextlib.suppress(OSError):
        os.rmdir(path)


#: Linux FICLONE ioctl: the copy shares the source's blocks until either is written (btrfs, XFS, bcachefs).
_FICLONE = 0x40049409


def clone_or_copy_file(source: Path, target: Path) -> None:
    """Copy one regular file: a reflink where the filesystem has them, else a real copy.

    The copy is the owner's to write (a read-only cache entry gives writable copies)
    and keeps the source's modification time.
    """
    info = os.stat(source)
    if os.path.lexists(target):
        os.unlink(target)  # never write through a link someone else shares
    cloned = False
    if sys.platform.startswith("linux"):
        import fcntl

        with open(source, "rb") as src, open(target, "wb") as dst:
            try:
                fcntl.ioctl(dst.fileno(), _FICLONE, src.fileno())
                cloned = True
            except OSError:
                pass  # not a reflink filesystem (ext4, tmpfs) or across devices: copy below
    if not cloned:
        shutil.copyfile(source, target)  # sendfile / copy_file_range in the kernel
    os.chmod(target, stat.S_IMODE(info.st_mode) | stat.S_IWUSR | stat.S_IRUSR)
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))


def copy_tree(src: Path, dst: Path) -> None:
    """Copy the folder ``src`` into ``dst`` (created; may exist): regular files only,
    each a reflink or a real copy, so editing the copy never changes ``src``.

    Refuses links leaving ``src`` and special files before writing anything (see
    ``tree_entries``). ``dst`` is not cleaned on failure: copy into an ``atomic_dir``.
    """
    _copy_entries(tree_entries(src), Path(dst), link=False)


def link_or_copy_tree(src: Path, dst: Path) -> None:
    """Like ``copy_tree``, but hard-links files where the filesystem allows (same device).

    Only for a ``src`` nobody edits afterwards (a plugin's scratch output moved into
    its step folder): a hard link shares the file, edits included. Builds and
    installs are made with ``copy_tree``.
    """
    _copy_entries(tree_entries(src), Path(dst), link=True)


def _copy_entries(entries: list[tuple[Path, Path | None]], dst: Path, *, link: bool) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for rel, source in entries:
        target = dst / rel
        if source is None:
            target.mkdir(exist_ok=True)
            continue
        if link:
            try:
                if os.path.lexists(target):
                    os.unlink(target)
                os.link(source, target)
                continue
            except OSError:
                pass
        clone_or_copy_file(source, target)


# ------------------------------------------------------------------ locks
#: Environment variable: seconds to wait for a lock another slmk process holds.
LOCK_TIMEOUT_ENV = "SLMK_LOCK_TIMEOUT_S"


def lock_timeout_s(default: float) -> float:
    """$SLMK_LOCK_TIMEOUT_S when set (a test makes waits short), else ``default``."""
    value = os.environ.get(LOCK_TIMEOUT_ENV)
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not (seconds >= 0 and seconds != float("inf")):
        raise UsageError(
            f"{LOCK_TIMEOUT_ENV}={value!r} is not a number of seconds", hint="e.g. SLMK_LOCK_TIMEOUT_S=600"
        )
    return seconds


@contextmanager
def file_lock(
    path: Path, what: str = "resource", timeout_s: float | None = None, *, default_timeout_s: float = 600.0
) -> Iterator[None]:
    """An exclusive advisory lock (fcntl on POSIX, msvcrt on Windows).

    The holder writes its pid into the lock file. A process that has to wait says so
    once on stderr (what, which pid holds it) and gives up with one line after
    ``timeout_s`` (default: $SLMK_LOCK_TIMEOUT_S, else ``default_timeout_s``). The
    kernel releases the lock when its holder dies, so a lock is never stale.
    """
    import time

    timeout = lock_timeout_s(default_timeout_s) if timeout_s is None else timeout_s
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    deadline = time.monotonic() + timeout
    told = False
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
                holder = _lock_holder(path)
                if time.monotonic() > deadline:
                    raise SlmkError(
                        f"timed out after {timeout:g}s waiting for the lock on {what}, held by {holder}",
                        hint=f"wait for that process to finish, or raise {LOCK_TIMEOUT_ENV}",
                    ) from None
                if not told:
                    print(
                        f"waiting for the lock on {what}, held by {holder} ({path}; up to {timeout:g}s, "
                        f"{LOCK_TIMEOUT_ENV} sets it)",
                        file=sys.stderr,
                        flush=True,
                    )
                    told = True
                time.sleep(0.1)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock


def _lock_holder(path: Path) -> str:
    try:
        pid = Path(path).read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "another slmk process"


def cache_root() -> Path:
    """slmk's own cache: $SLMK_CACHE_DIR, else $XDG_CACHE_HOME/slmk, else ~/.cache/slmk."""
    env = os.environ.get("SLMK_CACHE_DIR")
    if env:
        root = Path(env).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "slmk"
    check_cache_folder(root, "SLMK_CACHE_DIR" if env else "slmk's cache folder")
    return root


#: slmk marks its cache folder with a cache directory tag (https://bford.info/cachedir/):
#: backup tools skip it, and slmk knows the folder is its own.
CACHE_TAG = "CACHEDIR.TAG"
_CACHE_TAG_TEXT = (
    "Signature: 8a477f597d28d172789f06886806bc55\n# slmk's cache: steps, locks and builds it can make again.\n"
)
#: What a cache made before the tag holds: one of these is enough to know an slmk cache.
_CACHE_ENTRIES = frozenset({"steps", "locks", "merged", "measure-builds", "foundry-local", "olive-cache"})


def check_cache_folder(root: Path, what: str) -> None:
    """Refuse a cache folder slmk would litter or damage: the file-system root, the home
    folder, or a folder that already holds things and is not an slmk cache (/usr, /etc,
    a project). A new, empty or tagged folder (or one an older slmk filled) is taken, and
    tagged as slmk's cache."""
    require_folder(root, what)
    resolved = Path(root).resolve()
    try:
        home = Path.home().resolve()
    except (RuntimeError, KeyError):  # no HOME and no password entry
        home = None
    if resolved == Path(resolved.anchor) or resolved == home:
        place = "the file-system root" if resolved == Path(resolved.anchor) else "your home folder"
        raise UsageError(
            f"{what} {root} is {place}: slmk keeps steps/, locks/ and builds in its cache folder",
            hint="point it at a folder of slmk's own, e.g. ~/.cache/slmk",
        )
    if not resolved.is_dir():
        return  # created on first use
    entries = set()
    try:
        with os.scandir(resolved) as scan:
            for entry in scan:
                entries.add(entry.name)
                if entry.name == CACHE_TAG or entry.name in _CACHE_ENTRIES or len(entries) > 64:
                    break
    except OSError as exc:
        raise UsageError(
            f"cannot read {what} {root}: {exc.strerror}", hint="point it at a folder you can write"
        ) from None
    if CACHE_TAG in entries:
        return
    if entries and not entries & _CACHE_ENTRIES:
        raise UsageError(
            f"{what} {root} already holds other files and is not an slmk cache (no {CACHE_TAG})",
            hint="point it at a new or empty folder; slmk tags its cache folder with CACHEDIR.TAG",
        )
    try:
        (resolved / CACHE_TAG).write_text(_CACHE_TAG_TEXT, encoding="ascii")
    except OSError:
        pass  # a read-only cache still works; the next write reports the real problem


def require_folder(path: Path, what: str) -> None:
    """Refuse a cache path that exists but is not a folder (a file, a FIFO) in one line."""
    if os.path.lexists(path) and not Path(path).is_dir():
        raise UsageError(f"{what} {path} is not a folder", hint="point it at a folder (it is created when missing)")
