"""The Foundry Local v2 SDK (``foundry_local_sdk``), in-process: one manager per cache.

The SDK's ``FoundryLocalManager`` is a process-wide singleton bound to one model
cache; slmk opens it for the cache it works on, and reopens it (closing the old
one) when asked for another cache while no chat session holds it.

Registrations live in the cache itself (``foundry.local.modelinfo.json``, guarded
by the SDK's own lock) and are re-read on each catalog query, so other processes
see them at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import weakref
from collections.abc import Iterable, Iterator
from importlib import util
from pathlib import Path
from typing import Any

from slmk.api import SlmkError
from slmk.api.files import cache_root

from .layout import Entry, publisher_dir

#: The application name the SDK records (logs, telemetry): slmk, not the user's app.
APP_NAME = "slmk"
#: Foundry's task for text chat models: what ChatSession accepts.
CHAT_TASK = "chat-completion"
#: A registration property slmk adds: the folder it registered (kept after the folder is gone).
PATH_PROPERTY = "slmk_path"

_lock = threading.RLock()
_state: dict[str, Any] = {"manager": None, "cache": None}
_sessions: weakref.WeakSet = weakref.WeakSet()


def available() -> bool:
    """Whether the SDK is installed (checked without importing it)."""
    try:
        return util.find_spec("foundry_local_sdk") is not None
    except (ImportError, ValueError):
        return False


def sdk_dirs() -> dict[str, Path]:
    """Where the SDK may write besides the model cache: all under slmk's own cache."""
    base = cache_root() / "foundry-local"
    return {"app_data": base / "app-data", "logs": base / "logs", "telemetry": base / "telemetry"}


def _import_sdk():
    # onnxruntime reads these when the SDK loads it (at import): set before importing.
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("ORT_TELEMETRY_DISABLED", "1")  # the SDK's own switch for non-essential events
    try:
        import foundry_local_sdk
    except ImportError as exc:
        raise SlmkError(
            f"the Foundry Local SDK cannot be imported: {exc}",
            hint="pip install 'foundry-local-sdk==2.2.1' (or pip install 'slmk[foundry]')",
        ) from exc
    # The SDK logs to stdout; slmk keeps stdout for answers and --json.
    for handler in logging.getLogger("foundry_local_sdk").handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
            handler.setStream(sys.stderr)
    return foundry_local_sdk


@contextlib.contextmanager
def _telemetry_store_redirected(folder: Path) -> Iterator[None]:
    """The SDK keeps a device id and an offline event store under $XDG_CACHE_HOME
    (~/.cache/Microsoft/DeveloperTools) on POSIX, decided when the manager starts:
    point it into slmk's cache for that moment."""
    if os.name == "nt":
        yield
        return
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(folder)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = old


@contextlib.contextmanager
def _telemetry_upload_off() -> Iterator[None]:
    """The SDK's native core uploads a ProcessInfo event to mobile.events.data.microsoft.com
    (a DNS lookup about a second after start, then every few seconds) even with
    ``disable_nonessential_telemetry`` and ORT_TELEMETRY_DISABLED; its only full switch is
    its CI detection ("CI environment detected; 1DS upload disabled"), read once when the
    manager starts. Set CI for that moment, unless the user set it (CI=false keeps uploads)."""
    if "CI" in os.environ:
        yield
        return
    os.environ["CI"] = "true"
    try:
        yield
    finally:
        os.environ.pop("CI", None)


def manager(cache: Path):
    """The SDK manager for ``cache``, started (or restarted for another cache) as needed."""
    fl = _import_sdk()
    cache = Path(cache).absolute()
    with _lock:
        current = fl.FoundryLocalManager.instance
        if current is not None and _serves(current, cache):
            _state.update(manager=current, cache=cache)
            return current
        if current is not None:
            if any(True for _ in _sessions):
                raise SlmkError(
                    f"the Foundry Local SDK is serving {_state['cache'] or 'another cache'} in this process "
                    f"and cannot switch to {cache} while a chat session is open",
                    hint="close the open session first (the SDK allows one cache per process)",
                )
            current.close()
        dirs = sdk_dirs()
        for folder in dirs.values():
            folder.mkdir(parents=True, exist_ok=True)
        cache.mkdir(parents=True, exist_ok=True)
        config = fl.Configuration(
            app_name=APP_NAME,
            model_cache_dir=str(cache),
            app_data_dir=str(dirs["app_data"]),
            logs_dir=str(dirs["logs"]),
            log_level=fl.LogLevel.WARNING,
            disable_nonessential_telemetry=True,
        )
        try:
            with _telemetry_store_redirected(dirs["telemetry"]), _telemetry_upload_off():
                fl.FoundryLocalManager.initialize(config)
        except Exception as exc:
            raise SlmkError(
                f"the Foundry Local SDK failed to start on {cache}: {exc}",
                hint="check that the cache folder is writable; `slmk doctor` checks the SDK",
            ) from exc
        _state.update(manager=fl.FoundryLocalManager.instance, cache=cache)
        _guard_exit(_state["manager"])
        return _state["manager"]


def _guard_exit(started: Any) -> None:
    """Shut the SDK down at exit with Ctrl-C held back.

    The SDK closes its manager in an atexit hook (its native shutdown must run before
    the interpreter tears down). A Ctrl-C in that moment, after the command's work
    is done, printed a KeyboardInterrupt traceback and still exited 0. slmk's own
    hook replaces it: it finishes the shutdown, then reports the interruption in
    one line and exits 130, like any other Ctrl-C.
    """
    import atexit

    atexit.unregister(started.close)
    atexit.unregister(_close_at_exit)
    atexit.register(_close_at_exit)


def _close_at_exit() -> None:
    import signal

    from .hooks import pause

    interrupted: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    except ValueError:  # not the main thread: nothing to hold back
        previous = None
    try:
        pause("closing", until=lambda: bool(interrupted))
        with contextlib.suppress(Exception):
            close()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if interrupted:
        print("interrupted: slmk had finished its work; nothing half-written was left", file=sys.stderr, flush=True)
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        os._exit(130)  # an exit status from an atexit hook: the interpreter would report 0


def _serves(current: Any, cache: Path) -> bool:
    configured = getattr(getattr(current, "config", None), "model_cache_dir", None)
    return bool(configured) and Path(configured).absolute() == cache


def track_session(session: object) -> None:
    """Keep the manager from switching caches under an open session."""
    _sessions.add(session)


def untrack_session(session: object) -> None:
    _sessions.discard(session)


def local_catalog(cache: Path):
    fl = _import_sdk()
    return manager(cache).get_catalog(fl.CatalogType.LOCAL)


def registrations(cache: Path) -> dict[str, Path | None]:
    """Every model registered in the cache's local catalog: id -> folder (None: unknown)."""
    catalog = local_catalog(cache)
    found: dict[str, Path] = {}
    for model in catalog.list_models():  # one per alias: its variants hold every version
        for variant in model.variants or [model]:
            # The SDK reports no path once the folder is gone; slmk's own property still has it.
            path = variant.get_path() or variant.get_string_property(PATH_PROPERTY) or ""
            found[variant.id] = Path(path) if path else None
    return found


#: Where the SDK keeps a cache's local registrations (format version 2 in foundry-local-sdk 2.2.1).
REGISTRATIONS_FILE = "foundry.local.modelinfo.json"


def registrations_on_disk(cache: Path) -> dict[str, Path | None] | None:
    """The registrations as the SDK stores them in the cache, read without importing the SDK
    (``slmk doctor`` stays light); None when the file's format is not one slmk knows.

    No file: nothing was ever registered in this cache.
    """
    import json

    path = Path(cache) / REGISTRATIONS_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        found: dict[str, Path | None] = {}
        if data.get("version") != 2:
            return None
        for model in data["models"]:
            info = model["model_info"]
            where = model.get("model_path") or info.get("stringProperties", {}).get(PATH_PROPERTY) or ""
            found[str(info["id"])] = Path(where) if where else None
        return found
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def register(cache: Path, model_id: str, folder: Path, display_name: str):
    """Register ``folder`` as ``model_id`` (a chat model); returns the SDK model."""
    fl = _import_sdk()
    catalog = local_catalog(cache)
    try:
        with fl.ModelInfoBuilder() as metadata:
            metadata.set_string_property("task", CHAT_TASK)
            metadata.set_string_property("display_name", display_name)
            metadata.set_string_property(PATH_PROPERTY, str(folder))
            return catalog.register_model(str(folder), model_id, metadata)
    except fl.FoundryLocalException as exc:
        raise SlmkError(
            f"Foundry Local refused to register {model_id} ({folder}): {_native_message(exc)}",
            hint="`slmk list` shows what is installed; remove the conflicting model first",
        ) from exc


def unregister(cache: Path, model_id: str) -> None:
    fl = _import_sdk()
    try:
        local_catalog(cache).unregister_model(model_id)
    except fl.FoundryLocalException as exc:
        if "not found" not in str(exc):
            raise SlmkError(f"Foundry Local failed to unregister {model_id}: {_native_message(exc)}") from exc


def ensure_registered(cache: Path, model_id: str, folder: Path, display_name: str, *, refresh: bool = False):
    """The SDK model for ``model_id``, registered at ``folder`` (re-registered when it
    points elsewhere, or always with ``refresh`` so its metadata follows the files)."""
    registered = registrations(cache)
    current = registered.get(model_id)
    if model_id in registered and (refresh or current is None or not _same_path(current, folder)):
        unregister(cache, model_id)
        registered.pop(model_id)
    if model_id not in registered:
        return register(cache, model_id, folder, display_name)
    return local_catalog(cache).get_model_variant(model_id)


def reconcile(cache: Path, entries: Iterable[Entry], *, refresh: Iterable[str] = ()) -> list[str]:
    """Make the local catalog match slmk's installs in ``cache``.

    Registrations that point into slmk's publisher folder but at no installed model
    are dropped (an interrupted remove); installs without a registration get one (an
    install interrupted after its files were committed). Other registrations are
    never touched. Returns what changed, for the progress log.
    """
    entries = list(entries)
    refresh = set(refresh)
    root = publisher_dir(cache).absolute()
    wanted = {e.foundry_id: e for e in entries}
    changes: list[str] = []
    for model_id, path in registrations(cache).items():
        ours = path is not None and _is_inside(path, root)
        entry = wanted.get(model_id)
        if entry is not None and path is not None and _same_path(path, entry.leaf) and model_id not in refresh:
            wanted.pop(model_id)
            continue
        if not ours:
            if entry is not None:
                raise SlmkError(
                    f"{model_id} is already registered in Foundry Local for {path}, outside slmk's installs",
                    hint=f"unregister it, or install under another name than {entry.name!r}",
                )
            continue
        unregister(cache, model_id)
        if entry is None:
            changes.append(f"unregistered {model_id} (its folder is gone)")
    for model_id, entry in wanted.items():
        register(cache, model_id, entry.leaf, entry.name)
        changes.append(f"registered {model_id}")
    return changes


def _same_path(a: Path, b: Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def _is_inside(path: Path, root: Path) -> bool:
    try:
        Path(path).resolve().relative_to(root.resolve())
    except (ValueError, OSError):
        return False
    return True


def _native_message(exc: BaseException) -> str:
    """The SDK prefixes messages with the C++ source location and signature; keep the sentence."""
    text = " ".join(str(exc).split())
    if ") " in text and ".cc:" in text.split(") ", 1)[0]:
        text = text.split(") ", 1)[1]
    return text


def close() -> None:
    """Stop the SDK manager slmk started (tests and long-lived front ends)."""
    with _lock:
        current = _state["manager"]
        if current is not None:
            current.close()
        _state.update(manager=None, cache=None)
