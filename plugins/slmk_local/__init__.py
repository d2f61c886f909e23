"""The ``local`` executor: tasks in this process (workers=1) or in N worker processes.

With one worker a task runs when it is submitted, in this process: no pickling, the
simplest thing to debug. With ``workers=N`` a dispatcher thread feeds a process pool
(the spawn start method: a fresh interpreter per worker, no forked locks or threads)
and keeps the rules a cluster keeps: an exclusive task (a measurement) starts only
when nothing else runs, and nothing starts beside it; a task whose worker process died
is run again, in a new pool, up to ``Task.retries`` times.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any

from slmk.api import Executor, ExecutorOptions, Task, TaskResult, hookimpl

#: A node's name in result tables; a cluster sets it per node (see docs/sweep.md).
NODE_NAME_ENV = "SLMK_NODE_NAME"


def node_name() -> str:
    return os.environ.get(NODE_NAME_ENV) or socket.gethostname()


def run_task(function, args, kwargs) -> tuple[Any, str, float]:
    """Run one task in a worker process: (value, node, seconds)."""
    start = time.perf_counter()
    value = function(*args, **kwargs)
    return value, node_name(), time.perf_counter() - start


class InlineSession:
    """workers=1: each task runs when submitted, in this process."""

    def submit(self, task: Task) -> Future:
        future: Future = Future()
        future.set_running_or_notify_cancel()
        try:
            value, node, seconds = run_task(task.function, task.args, dict(task.kwargs))
        except Exception as exc:
            future.set_exception(exc)
        else:
            future.set_result(TaskResult(value, node, seconds))
        return future

    def close(self) -> None:
        pass


class PoolSession:
    """workers=N: a process pool behind a dispatcher that honours exclusive tasks and retries."""

    def __init__(self, workers: int):
        self.workers = workers
        self._cond = threading.Condition()
        self._queue: deque[tuple[Task, Future, int]] = deque()
        self._running = 0
        self._exclusive_running = False
        self._closed = False
        self._pool = self._new_pool()
        self._thread = threading.Thread(target=self._dispatch, name="slmk-local-dispatch", daemon=True)
        self._thread.start()

    def _new_pool(self):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"))

    def submit(self, task: Task) -> Future:
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the local executor is closed")
            self._queue.append((task, future, 1))
            self._cond.notify_all()
        return future

    def _can_start(self, task: Task) -> bool:
        if self._exclusive_running:
            return False
        if task.exclusive:
            return self._running == 0
        return self._running < self.workers

    def _dispatch(self) -> None:
        while True:
            with self._cond:
                # first come, first served: an exclusive task at the head waits for the
                # running ones to finish, and holds back those behind it
                while not self._closed and not (self._queue and self._can_start(self._queue[0][0])):
                    self._cond.wait()
                if self._closed:
                    return
                task, future, attempt = self._queue.popleft()
                if attempt == 1 and not future.set_running_or_notify_cancel():
                    continue  # cancelled while queued
                self._running += 1
                self._exclusive_running = task.exclusive
                pool = self._pool
            try:
                inner = pool.submit(run_task, task.function, task.args, dict(task.kwargs))
            except Exception as exc:  # the pool broke under an earlier task
                inner = Future()
                inner.set_exception(exc)
            inner.add_done_callback(lambda done, t=task, f=future, a=attempt, p=pool: self._finished(t, f, a, p, done))

    def _finished(self, task: Task, future: Future, attempt: int, pool, inner: Future) -> None:
        from concurrent.futures.process import BrokenProcessPool

        error = inner.exception()
        with self._cond:
            self._running -= 1
            if task.exclusive:
                self._exclusive_running = False
            if isinstance(error, BrokenProcessPool) and attempt <= task.retries and not self._closed:
                # a worker died (killed, out of memory): the pool is unusable; start a
                # new one and run the task again, first in line
                if self._pool is pool:
                    pool.shutdown(wait=False, cancel_futures=True)
                    self._pool = self._new_pool()
                self._queue.appendleft((task, future, attempt + 1))
                self._cond.notify_all()
                return
            self._cond.notify_all()
        if error is not None:
            future.set_exception(error)
        else:
            value, node, seconds = inner.result()
            future.set_result(TaskResult(value, node, seconds, attempt))

    def close(self) -> None:
        with self._cond:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for _, future, _ in pending:
            future.cancel()
        self._thread.join(timeout=10)
        self._pool.shutdown(wait=True, cancel_futures=True)


def open_local(options: ExecutorOptions):
    workers = max(1, int(options.workers or 1))
    return InlineSession() if workers == 1 else PoolSession(workers)


@hookimpl
def slmk_executors():
    yield Executor(
        name="local",
        description="This machine: in-process (workers=1) or N worker processes (workers=N)",
        open=open_local,
    )
