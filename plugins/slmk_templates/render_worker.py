"""The render worker: every chat template renders in a small child process with hard limits.

Metering Jinja (sandbox.py) stops the usual ways a template loops or builds a big value,
with a precise message. It cannot see work done in C: ``==`` on two lists that share their
halves 40 levels deep compares 2**40 pairs, ``str.format`` allocates its result before any
hook runs, a codec can be quadratic. A budget that holds for any template has to bound the
process, so renderings run in one long-lived worker (``python -m slmk_templates.render_worker``:
this plugin's sandbox module and jinja2, no model, no other plugin) and:

* before each rendering the worker sets its CPU-time limit (``RLIMIT_CPU``) to what it has
  used plus ``RENDER_SECONDS`` (rounded up to the next second): the kernel ends it with
  SIGXCPU when a rendering uses that much CPU, in C or not, parent or no parent;
* the parent waits at most ``RENDER_WALL_SECONDS`` for an answer, then kills the worker
  (a fresh one starts on the next rendering);
* the worker lowers its own address-space limit (``RLIMIT_AS``) before each rendering to
  what it holds plus ``RENDER_MEMORY_BYTES``: an allocation past that is a MemoryError,
  reported as a render limit;
* Ctrl-C in the parent kills the worker and interrupts the rendering at once (the worker
  ignores SIGINT itself: it is the parent's to handle).

One worker serves a whole process, a request at a time under a lock (serve's threads share
it); a rendering costs a round trip over a pipe, a fraction of a millisecond, not a process
start. Requests travel pickled (the parent's own data); answers come back as ASCII JSON,
so nothing the template made is ever unpickled. Where the process limits do not exist
(not POSIX), renderings run in-process with the meters only.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import pickle
import signal
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

from slmk.api import SlmkError

_HEADER = struct.Struct(">Q")
#: An answer bigger than this is not one the worker can have made under its limits.
_MAX_ANSWER_BYTES = 1 << 31
#: How long a fresh worker may take to import jinja2 and say it is ready (a busy machine).
STARTUP_SECONDS = 30.0
_READY = b"slmk-render-worker-ready\n"
#: The most memory any rendering may take, however long its conversation.
_MAX_RENDER_MEMORY_BYTES = 4 * 1024**3
#: How much of what a template raised travels back (a template can raise a megabyte of text).
_MAX_CAUSE_CHARS = 4000


class _WorkerGone(Exception):
    """The worker ended or stopped answering; the parent starts a fresh one next time."""


class RenderWorker:
    """The parent's handle on one render worker process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: Any = None

    # ------------------------------------------------------------------ process
    def _start(self) -> Any:
        import subprocess

        package_parent = Path(__file__).resolve().parent.parent
        proc = subprocess.Popen(
            [sys.executable, "-m", "slmk_templates.render_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            # `-m` puts the working directory first on sys.path: start where this package lives,
            # so a folder of the same name in the user's working directory is never imported
            cwd=package_parent,
            close_fds=True,
        )
        try:
            ready = _read_exact(proc.stdout.fileno(), len(_READY), time.monotonic() + STARTUP_SECONDS)
        except BaseException:  # not ready in time, ended, or Ctrl-C while it started
            _kill(proc)
            raise
        if ready != _READY:
            _kill(proc)
            raise _WorkerGone("it started with an unexpected answer")
        return proc

    def _send(self, frame: bytes) -> Any:
        """Write a request to the worker, starting one when there is none or it has ended
        (a worker that died between renderings is no fault of this rendering)."""
        from .sandbox import ChatTemplateError

        for attempt in (1, 2):
            if self._proc is None or self._proc.poll() is not None:
                self._discard()
                try:
                    self._proc = self._start()
                except (_WorkerGone, OSError) as exc:
                    raise ChatTemplateError(
                        "could not start slmk's chat template renderer "
                        f"({sys.executable} -m slmk_templates.render_worker): "
                        f"{exc}",
                        hint="check that this Python can import slmk_templates and jinja2 (`slmk doctor`)",
                    ) from None
            try:
                self._proc.stdin.write(frame)
                self._proc.stdin.flush()
                return self._proc
            except OSError:
                if attempt == 2:
                    raise
                self._discard()
        raise AssertionError("unreachable")

    def close(self) -> None:
        """End the worker (it ends at end of input); a later rendering starts a fresh one."""
        with self._lock:
            self._discard(graceful=True)

    def _discard(self, graceful: bool = False) -> int | None:
        """End the worker; its exit status (negative: the signal that ended it)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if graceful:
            try:
                proc.stdin.close()  # the worker ends at end of input
                return proc.wait(timeout=1.0)
            except Exception:
                pass
        status = proc.poll()
        _kill(proc)
        return status

    # ------------------------------------------------------------------ requests
    def render(self, chat_template: str, plain: list, add_generation_prompt: bool, variables: dict) -> str:
        """One rendering in the worker, within the deadline; raises ChatTemplateError (one line)."""
        from .sandbox import (
            RENDER_BYTES_PER_CHAR,
            RENDER_MEMORY_BYTES,
            RENDER_SECONDS,
            RENDER_WALL_SECONDS,
            ChatTemplateError,
        )

        try:
            request = pickle.dumps(
                (chat_template, plain, add_generation_prompt, variables), protocol=pickle.HIGHEST_PROTOCOL
            )
        except (pickle.PicklingError, TypeError, AttributeError, RecursionError, ValueError) as exc:
            raise ChatTemplateError(
                f"the conversation cannot be passed to the chat template renderer: {type(exc).__name__}: {exc}"[:300],
                hint="messages and template variables are plain text, numbers, lists and mappings",
            ) from None
        # the budget grows with the conversation (a long prompt renders), not with the template
        conversation_bytes = max(0, len(request) - len(chat_template))
        memory = min(RENDER_MEMORY_BYTES + RENDER_BYTES_PER_CHAR * conversation_bytes, _MAX_RENDER_MEMORY_BYTES)
        frame = _HEADER.pack(len(request)) + struct.pack(">Qd", memory, RENDER_SECONDS) + request
        with self._lock:
            proc = None
            try:
                proc = self._send(frame)
                deadline = time.monotonic() + RENDER_WALL_SECONDS
                size = _HEADER.unpack(_read_exact(proc.stdout.fileno(), _HEADER.size, deadline))[0]
                if size > _MAX_ANSWER_BYTES:
                    raise _WorkerGone("it sent a malformed answer")
                answer = json.loads(_read_exact(proc.stdout.fileno(), size, deadline))
                if not isinstance(answer, dict) or not isinstance(answer.get("text", ""), str):
                    raise _WorkerGone("it sent a malformed answer")
            except (_WorkerGone, OSError, ValueError) as exc:
                reason = str(exc) if isinstance(exc, _WorkerGone) else f"failed ({type(exc).__name__})"
                if reason != "timeout" and proc is not None:  # it ended on its own: wait for its status
                    try:
                        proc.wait(timeout=2.0)
                    except Exception:
                        pass
                status = self._discard()
                raise _gone_error(reason, status) from None
            except BaseException:  # Ctrl-C (KeyboardInterrupt) or a stop: the rendering stops with it
                self._discard()
                raise
            if answer.get("restart"):  # it grew during this rendering: start the next one afresh
                self._discard(graceful=True)
        if "text" in answer:
            return answer["text"]
        raise _error_from_answer(answer)


def _gone_error(reason: str, status: int | None) -> SlmkError:
    from .sandbox import _CPU_TIME_REASON, RENDER_WALL_SECONDS, _limit_error

    if reason == "timeout":
        return _limit_error(f"it ran for more than {RENDER_WALL_SECONDS:g} s")
    if status is not None and -status == getattr(signal, "SIGXCPU", None):
        return _limit_error(_CPU_TIME_REASON)
    if status is not None and status < 0:
        try:
            reason = f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            reason = f"was killed by signal {-status}"
    elif status is not None:
        reason = f"ended with exit status {status}"
    return _limit_error(f"the render process {reason} while rendering it")


def _error_from_answer(answer: dict) -> SlmkError:
    from . import sandbox

    kinds = {cls.__name__: cls for cls in (sandbox.ChatTemplateError, *sandbox.UNUSABLE_TEMPLATE_ERRORS)}
    cls = kinds.get(answer.get("error"), sandbox.ChatTemplateError)
    error = cls(str(answer.get("message", "the chat template failed")), answer.get("hint"))
    cause = answer.get("cause")
    if isinstance(cause, list) and len(cause) == 2:
        error.__cause__ = TemplateRaised(str(cause[1]), kind=str(cause[0]))
    return error


class TemplateRaised(Exception):
    """What a template raised inside the render worker: the exception's text, and its type's
    name as ``kind`` (the ``__cause__`` of the ChatTemplateError the parent raises)."""

    def __init__(self, text: str, kind: str):
        super().__init__(text)
        self.kind = kind


def _kill(proc: Any) -> None:
    try:
        proc.kill()
    except OSError:
        pass
    try:
        proc.wait(timeout=5.0)
    except Exception:
        pass
    for stream in (proc.stdin, proc.stdout):
        try:
            stream.close()
        except Exception:
            pass


def _read_exact(fd: int, size: int, deadline: float) -> bytes:
    """``size`` bytes from ``fd`` before ``deadline``; _WorkerGone("timeout") after it."""
    import select

    chunks, missing = [], size
    while missing:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _WorkerGone("timeout")
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            raise _WorkerGone("timeout")
        chunk = os.read(fd, min(missing, 1 << 20))
        if not chunk:
            raise _WorkerGone("ended")
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------------- the process's worker
_WORKER: RenderWorker | None = None
_WORKER_LOCK = threading.Lock()


def _worker() -> RenderWorker:
    global _WORKER
    with _WORKER_LOCK:
        if _WORKER is None:
            _WORKER = RenderWorker()
            atexit.register(_WORKER.close)
        return _WORKER


def _forget_after_fork() -> None:
    # a forked child shares the parent's pipes: it starts a worker of its own
    global _WORKER, _WORKER_LOCK
    _WORKER, _WORKER_LOCK = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def isolated() -> bool:
    """Whether renderings run in the bounded worker process (POSIX), or in-process, metered only."""
    return os.name == "posix"


def render(chat_template: str, plain: list, add_generation_prompt: bool, variables: dict) -> str:
    """Render in the worker (see the module docstring); raises ChatTemplateError."""
    if not isolated():
        from .sandbox import render_in_process

        return render_in_process(chat_template, plain, add_generation_prompt, variables)
    return _worker().render(chat_template, plain, add_generation_prompt, variables)


def shutdown() -> None:
    """End this process's worker now (a later rendering starts a fresh one)."""
    if _WORKER is not None:
        _WORKER.close()


# ---------------------------------------------------------------------- the worker's side
def _address_space() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _set_soft_limit(resource: Any, which: int, soft: int) -> None:
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    try:
        resource.setrlimit(which, (soft, hard))
    except (ValueError, OSError):
        pass


def _serve(source: Any, sink: Any) -> None:
    import resource

    from . import sandbox

    sandbox._environment_class()  # import jinja2 and build the sandbox before saying ready
    import jinja2  # noqa: F401

    _set_soft_limit(resource, resource.RLIMIT_CORE, 0)
    sink.write(_READY)
    sink.flush()
    while True:
        header = source.read(_HEADER.size + 16)
        if len(header) < _HEADER.size + 16:
            return  # the parent closed the pipe (or is gone)
        (size,) = _HEADER.unpack_from(header)
        memory, seconds = struct.unpack_from(">Qd", header, _HEADER.size)
        request = source.read(size)
        if len(request) < size:
            return
        idle = _address_space()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        # whole seconds: the limit falls between the budget and the budget plus one second
        _set_soft_limit(resource, resource.RLIMIT_CPU, math.ceil(usage.ru_utime + usage.ru_stime + seconds + 0.5))
        if idle is not None:
            _set_soft_limit(resource, resource.RLIMIT_AS, idle + memory)
        try:
            chat_template, plain, add_generation_prompt, variables = pickle.loads(request)
            request = None
            answer: dict = {"text": sandbox.render_in_process(chat_template, plain, add_generation_prompt, variables)}
        except sandbox.ChatTemplateError as exc:
            answer = {"error": type(exc).__name__, "message": exc.message, "hint": exc.hint}
            if exc.__cause__ is not None:  # what the template raised, for callers that look at it
                answer["cause"] = [type(exc.__cause__).__name__, str(exc.__cause__)[:_MAX_CAUSE_CHARS]]
        except MemoryError:
            limit = sandbox._limit_error("it needed more memory than a rendering may take")
            answer = {"error": "RenderLimitError", "message": limit.message, "hint": limit.hint}
        except BaseException as exc:  # the worker answers; the parent decides
            answer = {"error": "ChatTemplateError", "message": f"the chat template failed: {type(exc).__name__}"}
        grown = _address_space()
        answer["restart"] = idle is None or grown is None or grown - idle > memory // 2
        data = json.dumps(answer, ensure_ascii=True).encode("ascii")
        sink.write(_HEADER.pack(len(data)) + data)
        sink.flush()
        if answer["restart"]:
            return


def main() -> None:
    """The worker process: answer rendering requests on stdin until it closes."""
    # Ctrl-C at the terminal reaches the whole process group: the parent handles it (and
    # ends this worker); a traceback here would only add noise.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    source = sys.stdin.buffer
    sink = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print cannot corrupt the answers
    try:
        _serve(source, sink)
    except (BrokenPipeError, KeyboardInterrupt):
        pass


if __name__ == "__main__":
    main()
