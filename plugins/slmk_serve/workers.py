"""One worker per served model: its loaded session, a bounded queue, generations in threads.

A runtime that batches (a ``BatchingSession``, e.g. ortgenai) gets a ``BatchWorker``:
one scheduler thread decodes up to ``max_batch`` answers together, step by step, on one
copy of the weights; a request joins the running batch as soon as there is room and
leaves it when it ends (continuous batching). Other runtimes get a ``ModelWorker``: their
sessions are not thread-safe, so one generation runs at a time in a worker thread.

Each model admits at most ``max_batch + max_queue`` requests; one more is refused at
once (the HTTP layer answers 503), and a request that waits longer than
``queue_timeout_s`` for room is refused too.

The event loop and the worker threads talk through an asyncio queue of events per job
(``started``, ``text``, ``done``, ``error``) posted with ``call_soon_threadsafe``, and a
``threading.Event`` the loop sets to cancel: the thread checks it between tokens and drops
the job's sequence (or closes the runtime's generator) at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmk.api import GenerationStats, SlmkError, UsageError
from slmk.api.models import read_genai_config

from .stops import StopScanner

#: Finished generations remembered for /health and tests.
HISTORY = 256
#: Text pieces a generation may run ahead of its client: a slow reader holds the session
#: instead of making the server buffer the whole answer.
MAX_AHEAD = 32


@dataclass(frozen=True)
class Limits:
    """What one server accepts; every bound has a default that keeps a laptop responsive."""

    max_queue: int = 16  # requests waiting per model, beyond those generating
    max_batch: int = 8  # answers decoded together per model (runtimes that batch; others: 1 at a time)
    max_tokens_limit: int = 2048  # the largest max_tokens a request may ask for
    max_body_bytes: int = 1 << 20  # request body
    queue_timeout_s: float = 60.0  # longest wait for a free session
    stall_timeout_s: float = 60.0  # longest a generation waits for a client that stopped reading
    max_connections: int = 256  # uvicorn limit_concurrency: above it, 503 before any parsing

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_tokens_limit", "max_body_bytes", "max_connections"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        if self.max_queue < 0:
            raise UsageError(f"max-queue must be 0 or more, not {self.max_queue}")
        for name in ("queue_timeout_s", "stall_timeout_s"):
            if getattr(self, name) <= 0:
                raise UsageError(f"{name[:-2].replace('_', '-')} must be positive, not {getattr(self, name)}")


class Refused(Exception):
    """A request the worker turns away: becomes an OpenAI-style error response."""

    def __init__(
        self, status: int, message: str, *, code: str | None = None, param: str | None = None, retry_after=None
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.retry_after = retry_after


@dataclass(frozen=True)
class GenerationRecord:
    """How one generation ended: ``finished`` (end token or length), ``stop`` (a stop
    string), ``cancelled`` (the client left), ``stalled`` (the client stopped reading),
    ``rejected`` (refused before the first token) or ``error``."""

    model: str
    outcome: str
    prompt_tokens: int
    generated_tokens: int
    seconds: float
    error: str = ""


@dataclass
class Job:
    """One request's generation, shared by the event loop and its worker thread."""

    messages: list[dict[str, str]]
    search: dict[str, Any]
    stops: Sequence[str] = ()
    min_tokens: int | None = None
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)
    credits: threading.Semaphore = field(default_factory=lambda: threading.BoundedSemaphore(MAX_AHEAD))
    outcome: str = ""
    stats: GenerationStats | None = None
    last_token_is_end: bool | None = None  # None: the runtime does not say
    error: BaseException | None = None
    done: bool = False
    prompt_ids: list[int] | None = None  # a prompt given as token ids: fed as is, no chat template
    logprobs: int | None = None  # record each answer token's logprob and this many alternatives
    echo: bool = False  # score the prompt's tokens too (prompt_logprobs, prompt_text)
    token_logprobs: list[dict[str, Any]] = field(default_factory=list)  # entries of the text yielded so far
    prompt_logprobs: list[dict[str, Any]] = field(default_factory=list)
    prompt_text: str = ""

    async def pieces(self) -> AsyncIterator[str]:
        """The answer's text as it comes; the job is cancelled if the caller stops early.

        With ``logprobs``, ``token_logprobs`` holds the entries of every piece yielded so far.
        """
        try:
            while True:
                kind, value = await self.events.get()
                if kind == "text":
                    self.credits.release()
                    if isinstance(value, tuple):  # (text, the entries of its tokens)
                        value, entries = value
                        self.token_logprobs.extend(entries)
                    yield value
                elif kind == "done":
                    self.done = True
                    return
        finally:
            if not self.done:
                self.stop()

    def stop(self) -> None:
        """Cancel: the worker thread closes the runtime's generator before its next token."""
        self.cancel.set()
        self._unblock()

    def _unblock(self) -> None:
        # wake a worker thread waiting for room to post text
        with contextlib.suppress(ValueError):
            for _ in range(MAX_AHEAD):
                self.credits.release()


def prompt_token_count(session: Any, messages: Sequence[Mapping[str, str]]) -> int | None:
    """Tokens of the rendered prompt, where the runtime exposes its template and tokenizer."""
    render, encode = getattr(session, "render_prompt", None), getattr(session, "encode", None)
    if callable(render) and callable(encode):
        return len(encode(render(messages)))
    return None


def open_generation(session: Any, job: Job, search: dict[str, Any], runtime: str) -> Iterator[str]:
    """The runtime's stream for ``job``: a conversation or token ids, with logprobs and echo when asked.

    ``max_new_tokens`` 0 (echo only) generates nothing: the prompt is scored and the stream is empty.
    """
    extra = {} if job.logprobs is None else {"logprobs": job.logprobs}
    ids = job.prompt_ids
    if job.echo:
        ids = ids if ids is not None else session.encode(session.render_prompt(job.messages))
        job.prompt_logprobs = session.prompt_logprobs(ids, job.logprobs or 0)
        job.prompt_text = session.decode(ids)
        if search.get("max_new_tokens") == 0:
            return _nothing()
    if job.min_tokens:
        count = len(ids) if ids is not None else prompt_token_count(session, job.messages)
        if count is None:
            raise UsageError(f"the {runtime} runtime cannot count prompt tokens, so not min_tokens")
        search["min_length"] = count + job.min_tokens
    if ids is not None:
        return session.generate_ids(ids, **search, **extra)
    return session.generate(job.messages, **search, **extra)


def _nothing() -> Iterator[str]:
    yield from ()


def _text_event(session: Any, job: Job, text: str) -> Any:
    """What a text event carries: the text, and with logprobs the entries of the tokens it holds."""
    return text if job.logprobs is None else (text, session.take_logprobs())


class ModelWorker:
    """A served model: ``parallel`` sessions and the queue in front of them."""

    def __init__(self, name: str, folder: Path, runtime: str, sessions: list[Any], limits: Limits):
        self.name = name
        self.folder = folder
        self.runtime = runtime
        self.sessions = sessions
        self.limits = limits
        first = sessions[0]
        self.context_length = int(getattr(first, "context_length", 0) or 0)
        self.defaults = dict(getattr(first, "default_search", {}) or {})
        self.vocab_size = _vocab_size(folder)  # 0: not known (bounds top_k and token-id prompts)
        self.created = int(time.time())
        self.admitted = 0  # requests between admission and the end of their generation (loop thread only)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.active = 0  # generations running in worker threads
        self.history: deque[GenerationRecord] = deque(maxlen=HISTORY)
        self.outcomes: dict[str, int] = {}  # every generation since start, by outcome
        self._executor = ThreadPoolExecutor(max_workers=len(sessions), thread_name_prefix=f"slmk-serve-{name}")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: asyncio.Queue | None = None

    # ------------------------------------------------------------ event loop side
    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the server's event loop (at startup)."""
        self._loop = loop
        self._pool = asyncio.Queue()
        for session in self.sessions:
            self._pool.put_nowait(session)

    async def start(self, job: Job) -> None:
        """Admit ``job``, wait for a session, and return once its first token is on the way.

        Raises ``Refused`` when the queue is full or the wait too long, and the runtime's
        own error when it refuses the request (bad options, a prompt over the context).
        """
        self._admit(len(self.sessions) + self.limits.max_queue)
        handed_over = False
        try:
            session = await self._take_session()
            try:
                self._loop.run_in_executor(self._executor, self._run, job, session)
            except BaseException:
                self._pool.put_nowait(session)
                raise
            handed_over = True
            kind, value = await job.events.get()
            if kind == "error":
                raise value
        except BaseException:
            if handed_over:
                job.stop()  # the thread releases the session and the admission
            else:
                self.admitted -= 1
            raise

    def _admit(self, capacity: int) -> None:
        """Count a request in, or refuse it at once (503) when ``capacity`` requests are in already."""
        if self.admitted >= capacity:
            raise Refused(
                503,
                f"model {self.name} is busy: {self.admitted} requests generating or queued (at most {capacity})",
                code="queue_full",
                retry_after=1,
            )
        self.admitted += 1

    async def _take_session(self) -> Any:
        """A free session, waiting at most ``queue_timeout_s``.

        Not ``asyncio.wait_for(queue.get())``: before Python 3.12 a cancellation that
        lands as the get completes loses the item, and a lost session is a model that
        never answers again. Here a session taken by a cancelled waiter goes back.
        """
        getter = asyncio.ensure_future(self._pool.get())
        try:
            done, _ = await asyncio.wait({getter}, timeout=self.limits.queue_timeout_s)
        except BaseException:
            self._give_back_or_cancel(getter)
            raise
        if not done:
            self._give_back_or_cancel(getter)
            raise Refused(
                503,
                f"model {self.name} stayed busy for {self.limits.queue_timeout_s:g} s",
                code="queue_timeout",
                retry_after=1,
            )
        return getter.result()

    def _give_back_or_cancel(self, getter: asyncio.Future) -> None:
        if getter.done() and not getter.cancelled():
            self._pool.put_nowait(getter.result())
        else:
            getter.cancel()  # a cancelled Queue.get takes nothing from the queue

    def _release(self, session: Any) -> None:
        self._pool.put_nowait(session)
        self.admitted -= 1

    def _post(self, job: Job, kind: str, value: Any = None) -> None:
        try:
            self._loop.call_soon_threadsafe(job.events.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: the server stopped, nobody listens
            pass

    # ------------------------------------------------------------ worker thread side
    def _run(self, job: Job, session: Any) -> None:
        with self._lock:
            self.active += 1
        started = time.perf_counter()
        stream = None
        scanner = StopScanner(job.stops)
        job.outcome = "error"
        try:
            stream = open_generation(session, job, dict(job.search), self.runtime)
        except BaseException as exc:
            job.outcome, job.error = "rejected", exc
            self._post(job, "error", exc)
        else:
            self._post(job, "started")
            try:
                for piece in stream:
                    if job.cancel.is_set():
                        job.outcome = "cancelled"
                        break
                    text = scanner.feed(piece)
                    if text:
                        # Wait while the client is MAX_AHEAD pieces behind; one that stops reading
                        # altogether must not hold the session for ever.
                        if not job.credits.acquire(timeout=self.limits.stall_timeout_s):
                            job.outcome = "stalled"
                            break
                        if job.cancel.is_set():
                            job.outcome = "cancelled"
                            break
                        self._post(job, "text", _text_event(session, job, text))
                    if scanner.stopped:
                        job.outcome = "stop"
                        break
                else:
                    tail = scanner.flush()
                    job.outcome = "finished"
                    if tail or job.logprobs is not None:  # the end token's logprob comes with no text
                        if job.credits.acquire(timeout=self.limits.stall_timeout_s):
                            self._post(job, "text", _text_event(session, job, tail))
                        else:
                            job.outcome = "stalled"
            except BaseException as exc:
                job.outcome, job.error = "error", exc
        finally:
            if stream is not None:
                stream.close()  # GeneratorExit inside the runtime: its native generator is freed now
            job.stats = getattr(session, "last_stats", None) if stream is not None else None
            job.last_token_is_end = _last_token_is_end(session) if stream is not None else None
            self._record(job, started)
            if stream is not None:
                self._post(job, "done")
            try:
                self._loop.call_soon_threadsafe(self._release, session)
            except RuntimeError:
                pass

    def _record(self, job: Job, started: float) -> None:
        """Count how ``job`` ended; before its client hears "done": whoever got an answer sees it in /health."""
        record = GenerationRecord(
            model=self.name,
            outcome=job.outcome,
            prompt_tokens=job.stats.prompt_tokens if job.stats else 0,
            generated_tokens=job.stats.generated_tokens if job.stats else 0,
            seconds=round(time.perf_counter() - started, 4),
            error=_one_line(job.error) if job.error else "",
        )
        with self._lock:
            self.active -= 1
            self.history.append(record)
            self.outcomes[record.outcome] = self.outcomes.get(record.outcome, 0) + 1
            self._changed.notify_all()

    # ------------------------------------------------------------ any thread
    def wait_idle(self, timeout: float) -> bool:
        """Block until no generation runs (True), or ``timeout`` seconds pass (False)."""
        with self._changed:
            return self._changed.wait_for(lambda: self.active == 0, timeout)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            active = self.active
            outcomes = dict(self.outcomes)
        return {
            "runtime": self.runtime,
            "sessions": len(self.sessions),
            "active": active,
            "queued": max(0, self.admitted - active),
            "outcomes": outcomes,
        }

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        for session in self.sessions:
            try:
                session.close()
            except Exception:  # closing is best effort at shutdown; one failure must not keep others open
                pass


class BatchWorker(ModelWorker):
    """A served model whose runtime batches: one scheduler thread, up to ``max_batch`` answers at once.

    Each loop: cancelled and stalled jobs leave, waiting jobs join while there is room
    (their options are checked then: a refusal reaches only that request), and one
    ``advance`` gives every running answer its next token. A slow reader does not hold
    the others back: once it is MAX_AHEAD pieces behind, its sequence is paused (it stays
    in the batch, its tokens are not taken) and, once it has read nothing for
    ``stall_timeout_s``, its answer is cancelled as ``stalled``.
    """

    def __init__(self, name: str, folder: Path, runtime: str, session: Any, limits: Limits):
        super().__init__(name, folder, runtime, [session], limits)
        self.session = session
        self.max_batch = min(limits.max_batch, int(getattr(session, "max_batch", limits.max_batch)))
        self._waiting: deque[Job] = deque()  # admitted, not yet in the batch (guarded by _lock)
        self._closing = False
        self._thread = threading.Thread(target=self._schedule, name=f"slmk-serve-{name}", daemon=True)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        if not self._thread.is_alive():
            self._thread.start()

    async def start(self, job: Job) -> None:
        self._admit(self.max_batch + self.limits.max_queue)
        if self._alone(job):
            # options a batch cannot take: one at a time on the runtime's plain session
            self._loop.run_in_executor(self._executor, self._run_alone, job)
        else:
            with self._changed:
                self._waiting.append(job)
                self._changed.notify_all()
        try:
            getter = asyncio.ensure_future(job.events.get())
            try:
                done, _ = await asyncio.wait({getter}, timeout=self.limits.queue_timeout_s)
            except BaseException:
                getter.cancel()
                raise
            if not done:
                getter.cancel()
                raise Refused(
                    503,
                    f"model {self.name} stayed busy for {self.limits.queue_timeout_s:g} s",
                    code="queue_timeout",
                    retry_after=1,
                )
            kind, value = getter.result()
            if kind == "error":
                raise value
        except BaseException:
            job.stop()  # the scheduler drops it (waiting or running) and ends its admission
            raise

    def _release(self, session: Any = None) -> None:
        self.admitted -= 1

    def _alone(self, job: Job) -> bool:
        """Whether ``job`` asks for what a batched sequence does not do (logprobs, echo, other options)."""
        if job.logprobs is not None or job.echo:
            return True
        batched = self.session.batched_search
        return any(value is not None and key not in batched for key, value in job.search.items())

    def _run_alone(self, job: Job) -> None:
        try:
            session = self.session.solo()
        except BaseException as exc:
            job.outcome, job.error = "rejected", exc
            self._post(job, "error", exc)
            with self._lock:
                self.active += 1  # _end counts it out
            self._end(job, None, time.perf_counter())
            return
        self._run(job, session)

    def _end(self, job: Job, sequence: Any, started: float) -> None:
        """Record how ``job`` ended, tell its client, and end its admission."""
        job.stats = sequence.stats if sequence is not None else None
        tokens = getattr(sequence, "tokens", None)
        job.last_token_is_end = int(tokens[-1]) in self.session.eos_token_ids if tokens else None
        self._record(job, started)
        if sequence is not None:
            self._post(job, "done")
        try:
            self._loop.call_soon_threadsafe(self._release)
        except RuntimeError:
            pass

    def _schedule(self) -> None:
        running: list[tuple[Job, Any, StopScanner, float]] = []
        backlog: dict[int, deque[str]] = {}
        blocked_since: dict[int, float] = {}
        while True:
            with self._changed:
                while not self._closing and not running and not self._waiting:
                    self._changed.wait()
                if self._closing:
                    return
                joining = [job for job in self._waiting if job.cancel.is_set()]  # gave up waiting
                for job in joining:
                    self._waiting.remove(job)
                while self._waiting and len(running) + len(joining) < self.max_batch:
                    joining.append(self._waiting.popleft())
            for job in joining:
                with self._lock:
                    self.active += 1
                started = time.perf_counter()
                if job.cancel.is_set():  # gave up while waiting (queue timeout, disconnect)
                    job.outcome = "rejected"
                    self._end(job, None, started)
                    continue
                try:
                    search = dict(job.search)
                    ids = job.prompt_ids
                    if job.min_tokens:
                        count = len(ids) if ids is not None else prompt_token_count(self.session, job.messages)
                        search["min_length"] = count + job.min_tokens
                    if ids is not None:
                        sequence = self.session.begin_ids(ids, **search)
                    else:
                        sequence = self.session.begin(job.messages, **search)
                except BaseException as exc:
                    job.outcome, job.error = "rejected", exc
                    self._post(job, "error", exc)
                    self._end(job, None, started)
                    continue
                self._post(job, "started")
                running.append((job, sequence, StopScanner(job.stops), started))
            if not running:
                continue
            # a job whose client has not taken its last piece is paused, not stepped
            stepping = [seq for job, seq, _, _ in running if not seq.done and not backlog.get(id(job))]
            try:
                texts = self.session.advance(stepping) if stepping else {}
            except BaseException as exc:
                for job, sequence, _, started in running:
                    job.outcome, job.error = "error", exc
                    self.session.release(sequence)
                    self._end(job, sequence, started)
                running = []
                continue
            still: list[tuple[Job, Any, StopScanner, float]] = []
            now = time.monotonic()
            for entry in running:
                job, sequence, scanner, started = entry
                pending = backlog.setdefault(id(job), deque())
                text = scanner.feed(texts.get(sequence, ""))
                if text:
                    pending.append(text)
                if sequence.done and not scanner.stopped:
                    tail = scanner.flush()
                    if tail:
                        pending.append(tail)
                while pending and job.credits.acquire(blocking=False):
                    self._post(job, "text", pending.popleft())
                if pending:
                    blocked_since.setdefault(id(job), now)
                else:
                    blocked_since.pop(id(job), None)
                if job.cancel.is_set():
                    job.outcome = "cancelled"
                elif now - blocked_since.get(id(job), now) > self.limits.stall_timeout_s:
                    job.outcome = "stalled"
                elif scanner.stopped and not pending:
                    job.outcome = "stop"
                elif sequence.done and not pending:
                    job.outcome = "finished"
                else:
                    still.append(entry)
                    continue
                if not sequence.done or scanner.stopped:
                    self.session.release(sequence)
                backlog.pop(id(job), None)
                blocked_since.pop(id(job), None)
                self._end(job, sequence, started)
            running = still
            if running and not stepping:
                time.sleep(0.005)  # only slow readers left: wait for them without spinning

    def snapshot(self) -> dict[str, Any]:
        info = super().snapshot()
        info.pop("sessions", None)
        info["max_batch"] = self.max_batch
        return info

    def close(self) -> None:
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self._executor.shutdown(wait=True, cancel_futures=True)
        try:
            self.session.close()
        except Exception:  # best effort at shutdown
            pass


def _last_token_is_end(session: Any) -> bool | None:
    tokens, ends = getattr(session, "last_token_ids", None), getattr(session, "eos_token_ids", None)
    if tokens is None or ends is None:
        return None
    return bool(tokens) and int(tokens[-1]) in ends


def _vocab_size(folder: Path) -> int:
    try:
        size = read_genai_config(folder).get("model", {}).get("vocab_size")
    except (SlmkError, OSError, ValueError, AttributeError):
        return 0
    return size if isinstance(size, int) and size > 0 else 0


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, SlmkError):
        return exc.one_line()
    return " ".join(f"{type(exc).__name__}: {exc}".split())
