"""Progress for long work, on stderr, silent with --quiet or --json."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TextIO, TypeVar

T = TypeVar("T")


class Progress:
    """Step lines (``[2/4] convert ... 12.3s``) and a bar for counted work.

    Plugins receive one through their request and call ``log``/``bar``; they never
    print directly, so ``--json`` output stays clean.
    """

    def __init__(self, quiet: bool = False, stream: TextIO | None = None, total_steps: int | None = None):
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.total_steps = total_steps
        self._step = 0

    def log(self, message: str) -> None:
        """One indented line under the current step."""
        if not self.quiet:
            print(f"  {message}", file=self.stream, flush=True)

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        """Time a step: ``[2/4] title ...`` when it starts, ``done in 1.2s`` or ``failed`` when it ends."""
        self._step += 1
        counter = f"[{self._step}/{self.total_steps}] " if self.total_steps else ""
        start = time.perf_counter()
        if not self.quiet:
            print(f"{counter}{title} ...", file=self.stream, flush=True)
        try:
            yield
        except BaseException:
            if not self.quiet:
                print(f"{counter}{title} failed after {time.perf_counter() - start:.1f}s", file=self.stream, flush=True)
            raise
        if not self.quiet:
            print(f"{counter}{title} done in {time.perf_counter() - start:.1f}s", file=self.stream, flush=True)

    def bar(self, items: Iterable[T], total: int | None = None, label: str = "") -> Iterator[T]:
        """Iterate with a one-line bar that redraws in place on a terminal."""
        items = list(items) if total is None and not hasattr(items, "__len__") else items
        total = total if total is not None else len(items)  # type: ignore[arg-type]
        interactive = not self.quiet and self.stream.isatty()
        start = time.perf_counter()
        done = 0
        for item in items:
            yield item
            done += 1
            if self.quiet:
                continue
            if interactive:
                width = 30
                filled = int(width * done / max(total, 1))
                elapsed = time.perf_counter() - start
                print(
                    f"\r  {label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {elapsed:.1f}s",
                    end="",
                    file=self.stream,
                    flush=True,
                )
            elif done == total or done % max(1, total // 10) == 0:
                print(f"  {label} {done}/{total}", file=self.stream, flush=True)
        if interactive:
            print(file=self.stream, flush=True)


QUIET = Progress(quiet=True)
