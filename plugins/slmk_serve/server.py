"""Start the endpoint in-process: load the models through the runtime hook, run uvicorn in a thread.

``serve(...)`` returns a ``RunningServer`` once the socket accepts connections; the
CLI (``slmk serve``), ``deploy --serve``, tests and benchmarks all start it so.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmk.api import BatchingSession, SlmkError, UsageError
from slmk.api.operations import get_registry, open_session, resolve_target

from .workers import BatchWorker, Limits, ModelWorker

#: Longest wait for uvicorn to start listening (startup is a few ms; a stuck one is a bug).
START_TIMEOUT_S = 30.0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_target(target: str) -> tuple[str | None, str]:
    """``NAME=TARGET`` names a model; a bare TARGET is named after itself."""
    name, sep, rest = target.partition("=")
    if sep and name and "/" not in name and rest:
        return name, rest
    return None, target


def load_models(
    targets: Sequence[str],
    *,
    runtime: str = "ortgenai",
    execution_provider: str | None = None,
    limits: Limits,
    installer: str = "foundry",
    cache_dir: Path | None = None,
    notes: list[str] | None = None,
) -> dict[str, ModelWorker]:
    """One worker per target, each with one session loaded by ``runtime``.

    A runtime that batches is asked for ``limits.max_batch`` sequences at once; a build it
    cannot batch (or another runtime) answers one request at a time, and ``notes`` says so.
    """
    batches = getattr(get_registry().get("slmk_runtimes", runtime, "runtime"), "batches", False)
    workers: dict[str, ModelWorker] = {}
    try:
        for name, folder, installed in _resolved_targets(targets, installer=installer, cache_dir=cache_dir):
            session = open_session(
                folder,
                runtime=runtime,
                execution_provider=execution_provider,
                installed=installed,
                cache_dir=cache_dir,
                options={"max_batch": limits.max_batch} if batches else None,
            )
            if isinstance(session, BatchingSession):
                workers[name] = BatchWorker(name, Path(folder), runtime, session, limits)
            else:
                why = getattr(session, "not_batched", None) or f"the {runtime} runtime does not batch"
                if notes is not None and limits.max_batch > 1:
                    notes.append(f"{name}: not batched ({why}): one answer at a time")
                workers[name] = ModelWorker(name, Path(folder), runtime, [session], limits)
    except BaseException:
        for worker in workers.values():
            worker.close()
        raise
    return workers


def _resolved_targets(targets: Sequence[str], *, installer: str, cache_dir: Path | None) -> list[tuple[str, Path, Any]]:
    """(name, folder, installed model or None) of each target; names must differ."""
    if not targets:
        raise UsageError("nothing to serve", hint="pass build folders or installed model names")
    resolved: dict[str, tuple[str, Path, Any]] = {}
    for target in targets:
        name, ref = parse_target(target)
        folder, installed = resolve_target(ref, installer=installer, cache_dir=cache_dir)
        name = name or (installed.name if installed else Path(folder).name)
        if name in resolved:
            raise UsageError(f"two models are named {name!r}", hint="name them: slmk serve NAME1=TARGET1 NAME2=TARGET2")
        resolved[name] = (name, Path(folder), installed)
    return list(resolved.values())


def _named_targets(targets: Sequence[str], *, installer: str, cache_dir: Path | None) -> list[tuple[str, Path]]:
    return [(name, folder) for name, folder, _ in _resolved_targets(targets, installer=installer, cache_dir=cache_dir)]


@dataclass(frozen=True)
class RayOptions:
    """``slmk serve --ray``: the cluster (None: an embedded one), replicas per model, CPUs per replica."""

    address: str | None = None
    replicas: int = 1
    num_cpus: float = 1.0
    temp_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise UsageError(f"replicas must be at least 1, not {self.replicas}")
        if self.num_cpus <= 0:
            raise UsageError(f"replica CPUs must be positive, not {self.num_cpus}")


class RunningServer:
    """An endpoint running in a background thread; ``stop()`` (or ``with``) ends it."""

    notes: list[str] = []  # what the start-up could not honour in full (e.g. a model not batched)
    deployment: Any = None  # the Ray Serve deployments (--ray), shut down with the server

    def __init__(self, server: Any, thread: threading.Thread, sock: socket.socket, workers: dict[str, ModelWorker]):
        self._server = server
        self._thread = thread
        self._socket = sock
        self.workers = workers
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        self.host, self.port = host, port
        self.url = f"http://{shown}:{port}"

    @property
    def base_url(self) -> str:
        """What the openai client takes as ``base_url``."""
        return f"{self.url}/v1"

    @property
    def models(self) -> list[str]:
        return list(self.workers)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """True once no model has a generation running (within ``timeout`` seconds)."""
        return all(worker.wait_idle(timeout) for worker in self.workers.values())

    def active_generations(self) -> int:
        return sum(worker.active for worker in self.workers.values())

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C stops it)."""
        try:
            while self._thread.is_alive():
                self._thread.join(0.5)  # a timed join lets KeyboardInterrupt through
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join()
        self._socket.close()
        for worker in self.workers.values():
            worker.close()
        self.workers = {}
        if self.deployment is not None:
            self.deployment.close()
            self.deployment = None

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@dataclass(frozen=True)
class ServeOptions:
    """How `slmk serve` serves: where it listens (port 0: any free port), who may call (``api_key``,
    ``cors_origins``), what loads the models (``runtime``, ``execution_provider``; installed names
    through ``installer`` and its ``cache_dir``), the limits, the log level, and Ray Serve (``ray``)."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    runtime: str = "ortgenai"
    execution_provider: str | None = None
    limits: Limits = field(default_factory=Limits)
    installer: str = "foundry"
    cache_dir: Path | None = None
    log_level: str = "warning"
    ray: RayOptions | None = None
    cors_origins: Sequence[str] = ()


def serve(targets: Sequence[str], options: ServeOptions | None = None) -> RunningServer:
    """Load ``targets`` and serve them as ``options`` say; returns once listening.

    With ``options.ray``, each model runs as a Ray Serve deployment of ``ray.replicas`` replicas
    (each batching on its own) and this process keeps the HTTP endpoint.
    """
    options = options or ServeOptions()
    host, port, api_key, runtime = options.host, options.port, options.api_key, options.runtime
    execution_provider, installer, cache_dir = options.execution_provider, options.installer, options.cache_dir
    log_level, ray, cors_origins = options.log_level, options.ray, options.cors_origins
    try:
        import uvicorn

        from .app import create_app
    except ImportError as exc:
        raise UsageError(
            f"slmk serve needs {exc.name}, which is not installed", hint="pip install 'slmk[serve]'"
        ) from None
    limits = options.limits
    check_api_key(api_key)
    sock = _bind(host, port)
    notes: list[str] = []
    deployment = None
    try:
        if ray is None:
            workers = load_models(
                targets,
                runtime=runtime,
                execution_provider=execution_provider,
                limits=limits,
                installer=installer,
                cache_dir=cache_dir,
                notes=notes,
            )
        else:
            from .ray_serve import RayDeployment

            deployment = RayDeployment(ray.address, ray.replicas, ray.num_cpus, ray.temp_dir)
            workers = {}
            for name, folder in _named_targets(targets, installer=installer, cache_dir=cache_dir):
                workers[name] = deployment.deploy(name, folder, runtime, execution_provider, limits)
    except BaseException:
        sock.close()
        if deployment is not None:
            deployment.close()
        raise
    app = create_app(
        workers,
        api_key=api_key,
        max_body_bytes=limits.max_body_bytes,
        max_tokens_limit=limits.max_tokens_limit,
        cors_origins=cors_origins,
    )
    _log_requests(log_level)
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,  # slmk.serve logs one line per request, with the model's tokens and times
        limit_concurrency=limits.max_connections,
        timeout_graceful_shutdown=5,
        lifespan="on",
    )
    ready = threading.Event()

    class _Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            ready.set()

    server = _Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="slmk-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready.wait(0.1):  # woken by startup; the loop notices a thread that ended without starting
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            for worker in workers.values():
                worker.close()
            if deployment is not None:
                deployment.close()
            raise SlmkError("the HTTP server did not start", hint="run with --log-level info to see why")
    running = RunningServer(server, thread, sock, workers)
    running.notes = notes
    running.deployment = deployment
    return running


def check_api_key(api_key: str | None) -> None:
    """A key a client can send as ``Authorization: Bearer KEY``: not empty, no spaces or control characters.

    Non-ASCII keys are allowed: clients send them as UTF-8 bytes, which is what is compared.
    """
    if api_key is None:
        return
    if not api_key.strip():
        raise UsageError("the API key is empty", hint="pass a non-empty --api-key, or none")
    if any(c.isspace() or not c.isprintable() for c in api_key):
        raise UsageError(
            "the API key holds a space or a control character, which an HTTP header cannot carry",
            hint="use letters, digits and punctuation",
        )


def _log_requests(log_level: str) -> None:
    """At info (or debug), slmk.serve's one line per request goes to stderr, as uvicorn's own lines do."""
    logger = logging.getLogger("slmk.serve")
    level = getattr(logging, log_level.upper(), logging.WARNING)
    logger.setLevel(level)
    if level <= logging.INFO and not any(getattr(h, "_slmk_serve", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        handler._slmk_serve = True
        logger.addHandler(handler)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: accepted sockets inherit the protocol, and asyncio sets TCP_NODELAY only
    # on sockets that say TCP. Without it a response written in two pieces waits for the
    # client's delayed ACK (~40 ms) on every kept-alive connection.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        hint = "pick another --port (0: any free port)" if exc.errno == 98 else "check --host"
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}", hint=hint) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


logging.getLogger("slmk.serve").addHandler(logging.NullHandler())
