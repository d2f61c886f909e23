"""Memory and CPU of this process while a model runs: RSS sampled in a thread, and the
kernel's high-water mark (VmHWM, reset per window) for peaks shorter than a sample."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import psutil

from .peak_memory import peak_rss_bytes, reset_peak_rss

#: Seconds between samples: fine enough to catch a generation's peak, light on 2 cores.
SAMPLE_INTERVAL_S = 0.01


def rss_bytes() -> int:
    return psutil.Process().memory_info().rss


@dataclass
class Window:
    """What the process used between ``ResourceSampler.window()`` entry and exit."""

    seconds: float = 0.0
    peak_rss_bytes: int = 0
    cpu_percent: float = 0.0  # of one core; 200 = two cores busy

    @property
    def cpu_percent_of_machine(self) -> float:
        return self.cpu_percent / (psutil.cpu_count() or 1)


class ResourceSampler:
    """Samples this process's RSS in a background thread; ``peak_rss_bytes`` is the highest seen.

    CPU use of a window comes from the process's CPU clock (``time.process_time``,
    nanosecond resolution, all threads) over wall time: exact even for windows of a
    few milliseconds, where psutil's clock-tick counters would read 0 or 100 %.
    """

    def __init__(self, interval_s: float = SAMPLE_INTERVAL_S):
        self.interval_s = interval_s
        self._process = psutil.Process(os.getpid())
        self.peak_rss_bytes = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._window_peak = 0

    def _sample(self) -> int:
        rss = self._process.memory_info().rss
        self.peak_rss_bytes = max(self.peak_rss_bytes, rss)
        self._window_peak = max(self._window_peak, rss)
        return rss

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._sample()
            except psutil.Error:  # pragma: no cover - the process is ending
                return

    def __enter__(self) -> ResourceSampler:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="slmk-resource-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        self.peak_rss_bytes = max(self.peak_rss_bytes, peak_rss_bytes())  # exact where the OS keeps it

    def window(self) -> _WindowContext:
        return _WindowContext(self)


class _WindowContext:
    def __init__(self, sampler: ResourceSampler):
        self.sampler = sampler
        self.result = Window()

    def __enter__(self) -> Window:
        self.sampler._window_peak = 0
        # the kernel's high-water mark catches peaks shorter than the sampling interval
        # (a long prompt's logits): reset it here, read it on exit
        self._exact = reset_peak_rss()
        self.sampler._sample()
        self._cpu = time.process_time()
        self._start = time.perf_counter()
        return self.result

    def __exit__(self, *exc_info: object) -> None:
        wall = time.perf_counter() - self._start
        busy = time.process_time() - self._cpu
        self.sampler._sample()
        if self._exact:
            self.sampler._window_peak = max(self.sampler._window_peak, peak_rss_bytes())
            self.sampler.peak_rss_bytes = max(self.sampler.peak_rss_bytes, self.sampler._window_peak)
        self.result.seconds = wall
        self.result.peak_rss_bytes = self.sampler._window_peak
        self.result.cpu_percent = 100.0 * busy / wall if wall > 0 else 0.0
