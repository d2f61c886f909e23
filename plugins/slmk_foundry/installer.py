"""Install, list and remove slmk builds in a Foundry Local cache.

An install is staged in a temporary folder inside slmk's publisher folder, with
Foundry's ``download.tmp`` marker in it from the first moment (both Foundry
generations skip such folders), checked, renamed into place, and committed by
deleting the marker: one unlink, so a crash or SIGKILL at any earlier point leaves
every scanner (slmk's, the legacy CLI's, the v2 SDK's) seeing the cache as it was.
The v2 SDK registration follows the commit; the next slmk install or remove
repairs a registration an interruption left behind (``sdk.reconcile``).

Versions: a name installed again gets the next version (``my-model:2``); with
``force`` the newest version is replaced, keeping its number. Where the platform
swaps two folders atomically (Linux ``renameat2``) a forced replace is that one
swap; elsewhere the new copy is committed beside the old one, which is hidden and
deleted after (``scan`` shows only the newer of two copies meanwhile).

Removing marks the folder (the commit point), renames it away, drops the SDK
registration and deletes it. Installs and removals of one cache take a lock on
``<cache>/slmk/.slmk-install.lock``; the first thing each does under it is to
finish what an interrupted one left (``recover``). ``repair`` does only that.

Isolation: the install holds copies of the build's regular files (reflinks where
the filesystem has them), never hard links or symbolic links, and nothing from
outside the build: a link leaving the build or a special file is refused before
the lock is taken. Before the commit the staged ONNX files are checked whole (the
graph parses, every external-data range lies inside its file); ``slmk_install.json``
records every file's size so ``list`` can tell a damaged install from a runnable one.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime as _dt
import os
import sys
from collections.abc import Iterable
from importlib import util
from pathlib import Path
from typing import Any

from slmk.api import (
    InstalledModel,
    InstallRequest,
    ModelInfo,
    Progress,
    PromptTemplate,
    SlmkError,
    StepFailed,
    UsageError,
)
from slmk.api import __version__ as slmk_version
from slmk.api.files import (
    clean_stale_tmp,
    copy_tree,
    dir_size,
    file_lock,
    remove_tree,
    temp_path,
    tree_entries,
    write_json_atomic,
    write_text_atomic,
)
from slmk.api.models import build_problems

from . import sdk
from .hooks import PAUSE_ENV, PAUSE_POINTS, pause
from .layout import (
    INFERENCE_MODEL,
    INSTALL_RECORD,
    LOCK_NAME,
    MARKER,
    TEMPLATE_KEYS,
    Entry,
    duplicates,
    foundry_id,
    foundry_suffix,
    leaf_of,
    leaves_with_marker,
    locate,
    model_dir_name,
    publisher_dir,
    read_entry,
    read_json,
    scan,
    validate_name,
)

INSTALLER_NAME = "foundry"

__all__ = ["PAUSE_ENV", "PAUSE_POINTS", "install", "list_installed", "remove", "repair"]
_pause = pause


# ------------------------------------------------------------------ list
def runtimes_here() -> tuple[str, ...]:
    """Runtimes that can load an installed model on this machine (checked without importing)."""
    found = []
    for runtime, module in (("foundry", "foundry_local_sdk"), ("ortgenai", "onnxruntime_genai")):
        try:
            if util.find_spec(module) is not None:
                found.append(runtime)
        except (ImportError, ValueError):
            continue
    return tuple(found)


#: ``state`` of an install whose files and registration are as installed.
STATE_OK = "ok"
#: ``state`` of an install the v2 SDK catalog does not list (an install or remove was interrupted).
STATE_UNREGISTERED = "not registered in Foundry Local v2 (run `slmk repair`)"


def install_problems(entry: Entry) -> list[str]:
    """What is missing or has another size than when ``entry`` was installed, and what in its
    genai_config.json the runtime could not load (cheap: stat and one small JSON file)."""
    problems = build_problems(entry.leaf, tokenizer=False)
    files = entry.record.get("files")
    if not isinstance(files, dict):
        return problems  # installed by an slmk that recorded no sizes
    for name, size in sorted(files.items()):
        path = entry.leaf / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != size:
            problems.append(f"{name} is {path.stat().st_size} bytes, not {size}")
    return problems


def install_state(entry: Entry, registered: dict[str, Path | None] | None) -> str:
    """``ok``, ``damaged: ...`` or not registered (``registered`` None: the SDK cannot tell)."""
    problems = install_problems(entry)
    if problems:
        return f"damaged: {'; '.join(problems[:3])} (reinstall it with --force)"
    if registered is not None:
        path = registered.get(entry.foundry_id, False)
        if path is False or (path is not None and not sdk._same_path(path, entry.leaf)):
            return STATE_UNREGISTERED
    return STATE_OK


def installed_model(
    entry: Entry, cache: Path, runtimes: tuple[str, ...] | None = None, state: str | None = None
) -> InstalledModel:
    record = entry.record
    state = state if state is not None else install_state(entry, None)
    try:
        size = dir_size(entry.leaf)
    except (OSError, UsageError) as exc:  # a tree slmk would never install (too deep, odd names)
        size = 0
        if not state.startswith("damaged"):
            state = f"damaged: {getattr(exc, 'message', exc)} (remove it with `slmk remove`)"
    runtimes = runtimes_here() if runtimes is None else runtimes
    if state.startswith("damaged"):
        runtimes = ()  # never advertise a damaged install as runnable
    extra = {
        "foundry_id": entry.foundry_id,
        "legacy_name": record.get("legacy_name", entry.name),
        "cache": str(cache),
        "installed_at": record.get("installed_at", ""),
        "source_build": record.get("source_build", ""),
        "state": state,
    }
    return InstalledModel(
        name=entry.name,
        version=str(entry.version),
        path=entry.leaf,
        installer=INSTALLER_NAME,
        precision=record.get("precision"),
        execution_provider=record.get("execution_provider"),
        size_bytes=size,
        runtimes=runtimes,
        extra=extra,
    )


def _registrations_or_none(cache: Path) -> dict[str, Path | None] | None:
    """The v2 catalog's registrations, read from the cache (no SDK start); the SDK itself
    when slmk does not know the file's format; None when neither can tell."""
    if not sdk.available():
        return None
    found = sdk.registrations_on_disk(cache)
    if found is not None:
        return found
    try:
        return sdk.registrations(cache)
    except SlmkError:
        return None


def list_installed(cache_dir: Path | None = None) -> list[InstalledModel]:
    """slmk's installs in the Foundry cache, each with its ``state`` (extra["state"]):
    ok, damaged (files missing or of another size: not runnable) or not registered.

    Read-only: takes no lock, repairs nothing (``slmk repair`` does). Registrations are
    read from the SDK's file in the cache, without starting the SDK.
    """
    cache = locate(cache_dir)
    runtimes = runtimes_here()
    entries = scan(cache)
    registered = _registrations_or_none(cache) if entries else None
    return [installed_model(e, cache, runtimes, install_state(e, registered)) for e in entries]


# ------------------------------------------------------------------ checks
def _check_build(build: Path) -> dict[str, Any]:
    if not build.is_dir():
        if build.exists():
            raise UsageError(f"{build} is a file, not a build folder", hint="pass the output folder of `slmk convert`")
        raise UsageError(f"build folder {build} does not exist", hint="pass the output folder of `slmk convert`")
    tree_entries(build)  # refuses links leaving the build and special files, before any lock or copy
    config = read_json(build / "genai_config.json")
    if config is None:
        if (build / "config.json").is_file():
            raise UsageError(
                f"{build} is a Hugging Face folder, not a build", hint=f"build it first: slmk convert {build} -o OUT"
            )
        raise UsageError(f"{build} has no readable genai_config.json", hint="pass the output folder of `slmk convert`")
    problems = _missing_model_files(build, config)
    if problems:
        raise UsageError(
            f"{build} cannot be installed: {'; '.join(problems[:3])}", hint="rebuild it with `slmk convert --force`"
        )
    return config


def _missing_model_files(folder: Path, config: dict[str, Any]) -> list[str]:
    return build_problems(folder)


def _check_template(template: PromptTemplate | None) -> dict[str, str]:
    if template is None:
        raise UsageError(
            "no prompt template for the legacy inference_model.json",
            hint="pass --template FILE (JSON with system/user/assistant/prompt, or a Jinja chat template)",
        )
    pieces = template.to_foundry()
    for key in TEMPLATE_KEYS:
        count = pieces[key].count("{Content}")
        if count != 1:
            raise UsageError(
                f"the prompt template's {key!r} holds {{Content}} {count} times, not once",
                hint="each of system, user, assistant and prompt carries the message text once",
            )
    return pieces


def _round_trip(leaf: Path, template: PromptTemplate, progress: Progress) -> None:
    """The legacy PromptTemplate must render conversations exactly as the chat template
    that Foundry Local v2 and onnxruntime-genai apply: two generations, one prompt."""
    from slmk.api.templates import check_round_trip, special_tokens_for

    info = ModelInfo.load(leaf)
    if not info.chat_template:
        raise UsageError(
            f"{leaf.name} has no chat template (Foundry Local v2 builds its prompts from it)",
            hint="pass --template FILE.jinja, or rebuild from a model whose tokenizer has one",
        )
    try:
        report = check_round_trip(info.chat_template, template, special_tokens_for(info))
    except SlmkError as exc:
        raise StepFailed(
            f"the prompt template does not match the model's chat template: {exc.message}",
            hint=exc.hint or "see it with `slmk template BUILD`; pass --template FILE to override",
        ) from exc
    for note in report.notes:
        progress.log(f"template: {note}")


def onnx_problems(folder: Path) -> list[str]:
    """Why the ONNX files in ``folder`` are not whole (empty when they are).

    Each ``*.onnx`` must parse as a model with a graph, and every tensor kept in an
    external data file must lie within that file, inside ``folder``. Reads the
    graphs, not the weights: milliseconds even for a multi-GB model.
    """
    try:
        import onnx
        from onnx.external_data_helper import _get_all_tensors
    except ImportError as exc:
        return [f"onnx is not installed, so the model files cannot be checked ({exc}): pip install 'slmk[foundry]'"]
    folder = Path(folder)
    problems: list[str] = []
    for path in sorted(folder.glob("*.onnx")):
        if path.stat().st_size == 0:
            problems.append(f"{path.name} is empty")
            continue
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # protobuf's DecodeError and friends: not an ONNX file
            problems.append(f"{path.name} is not an ONNX model ({type(exc).__name__})")
            continue
        if not model.graph.node or not model.opset_import:
            problems.append(f"{path.name} holds no ONNX graph")
            continue
        sizes: dict[str, int] = {}
        for tensor in _get_all_tensors(model):
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            info = {item.key: item.value for item in tensor.external_data}
            location = info.get("location", "")
            data = (folder / location).resolve()
            if not location or not data.is_relative_to(folder.resolve()):
                problems.append(f"{path.name} keeps {tensor.name} outside the model folder ({location!r})")
                break
            if location not in sizes:
                sizes[location] = data.stat().st_size if data.is_file() else -1
            if sizes[location] < 0:
                problems.append(f"{location}, the weights of {path.name}, is missing")
                break
            end = int(info.get("offset", 0) or 0) + int(info.get("length", 0) or 0)
            if end > sizes[location]:
                problems.append(f"{location} is {sizes[location]} bytes, {path.name} needs at least {end} (truncated?)")
                break
    return problems


def _check_staged(leaf: Path, build: Path, name: str, template: PromptTemplate, progress: Progress) -> None:
    problems = []
    for rel, source in tree_entries(build):
        if source is not None:
            copy = leaf / rel
            if not copy.is_file():
                problems.append(f"{rel} was not copied")
            elif copy.stat().st_size != source.stat().st_size and copy.name not in _REWRITTEN:
                problems.append(f"{rel} is {copy.stat().st_size} bytes, the build's is {source.stat().st_size}")
    config = read_json(leaf / "genai_config.json")
    if config is None:
        problems.append("genai_config.json does not parse")
    else:
        problems += _missing_model_files(leaf, config)
    inference = read_json(leaf / INFERENCE_MODEL) or {}
    if inference.get("Name") != name:
        problems.append(f"{INFERENCE_MODEL} names {inference.get('Name')!r}, not {name!r}")
    if problems:
        raise StepFailed(
            f"the staged install of {name} is incomplete: {'; '.join(problems)}",
            hint="check free disk space in the Foundry cache and retry",
        )
    damaged = onnx_problems(leaf)
    if damaged:
        raise UsageError(f"{build} is damaged: {'; '.join(damaged[:3])}", hint="rebuild it with `slmk convert --force`")
    _round_trip(leaf, template, progress)


#: Files an install may rewrite (chat template replaced), so their size may differ from the build's.
_REWRITTEN = {"tokenizer_config.json", "chat_template.jinja", INFERENCE_MODEL, INSTALL_RECORD}


def _replace_chat_template(leaf: Path, chat_template: str) -> None:
    """Put ``chat_template`` wherever the build keeps one (the runtimes read either)."""
    tokenizer_config = leaf / "tokenizer_config.json"
    jinja = leaf / "chat_template.jinja"
    data = read_json(tokenizer_config)
    wrote = False
    if data is not None and ("chat_template" in data or not jinja.exists()):
        data["chat_template"] = chat_template
        write_json_atomic(tokenizer_config, data, ensure_ascii=False)
        wrote = True
    if jinja.exists() or not wrote:
        write_text_atomic(jinja, chat_template)


# ------------------------------------------------------------------ folder swaps
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one atomic step (Linux renameat2); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (38, 22, 95):  # ENOSYS, EINVAL (flag or filesystem), EOPNOTSUPP
        return False
    raise OSError(errno, os.strerror(errno), str(a))


def _aside_name(root: Path, kind: str, folder_name: str) -> Path:
    return temp_path(root / folder_name, kind)


def _mark(folder: Path) -> None:
    """Hide a model folder from every scanner (Foundry's unfinished-download marker)."""
    for leaf in folder.glob("v*"):
        if leaf.is_dir():
            (leaf / MARKER).write_text("slmk: being removed\n")


def _commit(stage: Path, final: Path, version: int, replaced: Entry | None) -> tuple[Path, Path | None]:
    """Put the staged folder in place and make it visible.

    Returns the folder it now lives in and the replaced model's folder, set aside
    (hidden, to delete once the registration is done), if any. A replaced model is
    hidden only after the new one is committed: killed before that, the cache still
    shows the old one; killed after, a stale duplicate at most (``scan`` shows the
    newest, the next run deletes the other).
    """
    root = final.parent
    staged_marker = leaf_of(stage, version) / MARKER
    if replaced is not None and replaced.model_dir == final:
        staged_marker.unlink()
        if exchange(stage, final):
            _mark(stage)  # the old model now sits at the staging name until it is deleted
            _pause("renamed")
            _pause("committed")
            return final, stage
        staged_marker.write_text("slmk install in progress\n")
        final = _free_name(final)  # no atomic swap here: commit beside the old copy, then drop it
    elif final.exists():
        raise UsageError(
            f"{final} is in the way (not an slmk install slmk can read)",
            hint="move or delete that folder, then install again",
        )
    os.replace(stage, final)
    _pause("renamed")
    (leaf_of(final, version) / MARKER).unlink()
    _pause("committed")
    aside = None
    if replaced is not None:
        _mark(replaced.model_dir)
        aside = _aside_name(root, "old", replaced.model_dir.name)
        os.replace(replaced.model_dir, aside)
    return final, aside


def _free_name(folder: Path) -> Path:
    for number in range(2, 1000):
        candidate = folder.with_name(f"{folder.name}.{number}")
        if not candidate.exists():
            return candidate
    raise StepFailed(f"no free folder name next to {folder}", hint="remove old installs of this model")


def _undo_commit(final: Path, aside: Path | None, replaced: Entry | None) -> None:
    """Take a committed install back out (its registration failed), restoring what it replaced."""
    trash = _aside_name(final.parent, "rm", final.name)
    os.replace(final, trash)
    if aside is not None and replaced is not None:
        os.replace(aside, replaced.model_dir)
        for leaf in replaced.model_dir.glob("v*"):
            (leaf / MARKER).unlink(missing_ok=True)
    remove_tree(trash)


# ------------------------------------------------------------------ recovery
def recover(cache: Path, progress: Progress) -> None:
    """Finish what an interrupted install or remove left (call with the cache lock held).

    Marked folders under a final name never committed (or were being removed), and
    staging folders of dead processes are garbage; of two copies of one version (a
    forced replace killed before it dropped the old copy) the newer stays.
    """
    root = publisher_dir(cache)
    if not root.is_dir():
        return
    for model_dir in leaves_with_marker(cache):
        progress.log(f"removing {model_dir.name}: left by an interrupted install or remove")
        remove_tree(model_dir)
    clean_stale_tmp(root)
    for stale in duplicates(cache):
        progress.log(f"removing {stale.model_dir.name}: an older copy of {stale.name}:{stale.version}")
        _mark(stale.model_dir)
        trash = _aside_name(root, "rm", stale.model_dir.name)
        os.replace(stale.model_dir, trash)
        remove_tree(trash)


def _sync_registrations(cache: Path, progress: Progress, refresh: Iterable[str] = ()) -> None:
    if not sdk.available():
        progress.log(
            "foundry-local-sdk is not installed: the model is in the cache for the legacy foundry CLI only "
            "(pip install 'slmk[foundry]' to register it with Foundry Local v2)"
        )
        return
    for change in sdk.reconcile(cache, scan(cache), refresh=refresh):
        progress.log(change)


def _lock(cache: Path):
    return file_lock(publisher_dir(cache) / LOCK_NAME, what=f"the Foundry Local cache {cache}")


def _file_sizes(leaf: Path) -> dict[str, int]:
    return {
        rel.as_posix(): source.stat().st_size
        for rel, source in tree_entries(leaf)
        if source is not None and rel.as_posix() not in (INSTALL_RECORD, MARKER)
    }


# ------------------------------------------------------------------ repair
def repair(cache_dir: Path | None = None, progress: Progress | None = None) -> list[str]:
    """Finish what interrupted installs and removals left, and register every install
    with the v2 SDK (or drop registrations of removed ones), without installing anything.

    Returns what it changed (empty when the cache was in order).
    """
    progress = progress or Progress(quiet=True)
    cache = locate(cache_dir)
    root = publisher_dir(cache)
    if not root.is_dir():
        return []
    changes: list[str] = []

    class _Collect(Progress):
        def log(self, message: str) -> None:
            changes.append(message)
            progress.log(message)

    collect = _Collect(quiet=True)
    with _lock(cache):
        recover(cache, collect)
        if sdk.available():
            for change in sdk.reconcile(cache, scan(cache)):
                collect.log(change)
    return changes


# ------------------------------------------------------------------ install
def install(request: InstallRequest) -> InstalledModel:
    name = validate_name(request.name)
    build = Path(request.build_dir).expanduser().absolute()
    _check_build(build)
    pieces = _check_template(request.template)
    ep = request.execution_provider
    suffix = foundry_suffix(ep)  # refuses a provider Foundry Local has no variant for, before any work
    progress = request.progress
    build_info = read_json(build / "slmk_build.json") or {}
    cache = locate(request.cache_dir)
    root = publisher_dir(cache)
    root.mkdir(parents=True, exist_ok=True)
    with _lock(cache):
        recover(cache, progress)
        same_name = [e for e in scan(cache) if e.name.casefold() == name.casefold()]
        replaced = max(same_name, key=lambda e: e.version) if request.force and same_name else None
        version = replaced.version if replaced else max((e.version for e in same_name), default=0) + 1
        model_id = foundry_id(name, suffix, version)
        final = root / model_dir_name(name, suffix, version)
        stage = _aside_name(root, "new", final.name)
        leaf = leaf_of(stage, version)
        record = {
            "name": name,
            "version": version,
            "foundry_id": model_id,
            "legacy_name": name,
            "precision": build_info.get("precision"),
            "execution_provider": ep.name,
            "foundry_suffix": suffix,
            "source_build": str(build),
            "source_model": build_info.get("source"),
            "installed_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds"),
            "slmk_version": slmk_version,
        }
        progress.log(
            f"installing {build} as {name}:{version} ({model_id}) in {cache}"
            + (f", replacing {replaced.name}:{replaced.version}" if replaced else "")
        )
        aside = None
        try:
            leaf.mkdir(parents=True)
            (leaf / MARKER).write_text("slmk install in progress\n")
            copy_tree(build, leaf)  # copies: editing or damaging the build never reaches the install
            _pause("copied")
            if request.chat_template:
                _replace_chat_template(leaf, request.chat_template)
            write_json_atomic(leaf / INFERENCE_MODEL, {"Name": name, "PromptTemplate": pieces}, ensure_ascii=False)
            record["files"] = _file_sizes(leaf)
            write_json_atomic(leaf / INSTALL_RECORD, record, ensure_ascii=False)
            _check_staged(leaf, build, name, request.template, progress)
            _pause("checked")
            final, aside = _commit(stage, final, version, replaced)
        except BaseException:
            remove_tree(stage)
            raise
        try:
            _sync_registrations(cache, progress, refresh=[model_id] if replaced else [])
        except BaseException:
            _undo_commit(final, aside, replaced)
            with contextlib.suppress(Exception):
                _sync_registrations(cache, Progress(quiet=True))
            raise
        if aside is not None:
            remove_tree(aside)
        entry = read_entry(leaf_of(final, version))
        if entry is None:  # pragma: no cover - the folder was checked and committed under the lock
            raise StepFailed(f"{final} vanished after it was installed", hint="check the Foundry cache folder")
        return installed_model(entry, cache, state=STATE_OK)  # checked, committed and registered just now


# ------------------------------------------------------------------ remove
def remove(
    name: str, version: str | None = None, cache_dir: Path | None = None, progress: Progress | None = None
) -> InstalledModel:
    """Remove ``name:version`` (the newest version when None) from the folder layout and the SDK catalog."""
    progress = progress or Progress(quiet=True)
    cache = locate(cache_dir)
    if version is not None and not str(version).isdigit():
        raise UsageError(f"version {version!r} is not a number", hint="use NAME or NAME:VERSION, e.g. my-model:2")
    root = publisher_dir(cache)
    if not root.is_dir():
        raise _unknown(name, version, cache, [])
    with _lock(cache):
        recover(cache, progress)
        entries = scan(cache)
        matches = [e for e in entries if e.name == name and (version is None or e.version == int(version))]
        if not matches:
            raise _unknown(name, version, cache, entries)
        entry = max(matches, key=lambda e: e.version)
        removed = installed_model(entry, cache, state=STATE_OK)
        _mark(entry.model_dir)  # the commit point: from here every scanner skips it
        trash = _aside_name(root, "rm", entry.model_dir.name)
        os.replace(entry.model_dir, trash)
        _pause("removed")
        if sdk.available():
            sdk.reconcile(cache, scan(cache))
        remove_tree(trash)
        progress.log(f"removed {removed.ref} ({removed.extra['foundry_id']})")
        return removed


def _unknown(name: str, version: str | None, cache: Path, entries: list[Entry]) -> UsageError:
    ref = f"{name}:{version}" if version else name
    installed = ", ".join(f"{e.name}:{e.version}" for e in entries) or "none"
    return UsageError(f"no installed model {ref!r} in {cache}", hint=f"installed: {installed}; `slmk list` shows them")
