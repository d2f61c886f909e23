"""``slmk serve --ray``: each model a Ray Serve deployment of ``--replicas`` replicas, behind the same API.

The HTTP endpoint (FastAPI, the same routes and errors) stays in the ``slmk serve``
process; each model's requests go through a Ray Serve ``DeploymentHandle``, whose router
picks a replica (Ray Serve's own load balancing, nothing home-made). A replica is an
actor that loads the model once and runs a ``BatchWorker``: each replica batches its own
requests, and admits ``max_batch + max_queue`` of them (one more: 503, as without Ray).
Ray places replicas on the cluster's nodes (spread, ``num_cpus`` each).

Ray is started without its dashboard and without usage statistics (no lookup off the
machine); embedded (no address) it listens on the loopback only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import time
from pathlib import Path
from typing import Any

from slmk.api import SlmkError, UsageError

from .workers import HISTORY, GenerationRecord, Job, Limits, Refused

INSTALL_HINT = "pip install 'slmk[ray]'"
#: Environment of this process and every Ray process it starts: no usage statistics sent.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_USAGE_STATS_PROMPT_ENABLED": "0"}
APP_PREFIX = "slmk-"
#: A request that a replica could not take because it died is sent again (another replica), this often.
DEAD_REPLICA_RETRIES = 3


def _ray():
    os.environ.update(RAY_ENV)
    try:
        import ray
        from ray import serve
    except ImportError:
        raise UsageError("slmk serve --ray needs Ray Serve", hint=INSTALL_HINT) from None
    return ray, serve


class ModelReplica:
    """One Ray Serve replica of one model: loads it and batches the requests routed to it."""

    def __init__(self, name: str, folder: str, runtime: str, execution_provider: str | None, limits: dict):
        from .server import load_models

        os.environ.update(RAY_ENV)
        self.node = os.environ.get("SLMK_NODE_NAME") or socket.gethostname()
        self.worker = load_models(
            [f"{name}={folder}"], runtime=runtime, execution_provider=execution_provider, limits=Limits(**limits)
        )[name]
        self._attached = False

    def _attach(self) -> None:
        if not self._attached:
            self.worker.attach(asyncio.get_running_loop())
            self._attached = True

    async def describe(self) -> dict[str, Any]:
        return {
            "context_length": self.worker.context_length,
            "defaults": self.worker.defaults,
            "vocab_size": getattr(self.worker, "vocab_size", 0),
            "folder": str(self.worker.folder),
            "guidance_kinds": list(getattr(self.worker.sessions[0], "guidance_kinds", None) or ()),
            "takes_tools": bool(getattr(self.worker.sessions[0], "takes_tools", False)),
            "node": self.node,
        }

    async def health(self) -> dict[str, Any]:
        return {"node": self.node, **self.worker.snapshot()}

    async def generate(self, messages: list, search: dict, stops: list, min_tokens: int | None):
        """Events of one answer: ("started", node), ("text", piece) ..., ("done", outcome and stats)."""
        self._attach()
        job = Job(messages, search, stops=stops, min_tokens=min_tokens)
        try:
            await self.worker.start(job)
        except Exception as exc:  # sent as data: the caller raises the same error, hint and status included
            yield ("error", _error_record(exc))
            return
        try:
            yield ("started", self.node)
            async for piece in job.pieces():
                yield ("text", piece)
        finally:
            job.stop()  # the caller went away (cancelled stream): the sequence leaves the batch
        yield (
            "done",
            {
                "outcome": job.outcome,
                "stats": dataclasses.asdict(job.stats) if job.stats else None,
                "last_token_is_end": job.last_token_is_end,
                "error": str(job.error) if job.error else "",
            },
        )


def _error_record(exc: BaseException) -> dict[str, Any]:
    record: dict[str, Any] = {"message": getattr(exc, "message", None) or str(exc), "hint": getattr(exc, "hint", None)}
    if isinstance(exc, Refused):
        record.update(kind="refused", status=exc.status, code=exc.code, param=exc.param, retry_after=exc.retry_after)
    else:
        record["kind"] = "usage" if isinstance(exc, UsageError) else "slmk"
        if not isinstance(exc, SlmkError):
            record["message"] = f"{type(exc).__name__}: {exc}"
    return record


def _error_from(record: dict[str, Any]) -> BaseException:
    if record["kind"] == "refused":
        return Refused(
            record["status"],
            record["message"],
            code=record["code"],
            param=record["param"],
            retry_after=record["retry_after"],
        )
    kind = UsageError if record["kind"] == "usage" else SlmkError
    return kind(record["message"], hint=record["hint"])


class _ReplicaSession:
    """Stands for a replica's session where the app checks what it can do: constrained output
    (``guidance`` travels in the request's options) and tools, as the replica's runtime says;
    no logprobs, echo or token-id prompts (they do not travel to a replica)."""

    def __init__(self, info: dict[str, Any]):
        self.guidance_kinds = tuple(info.get("guidance_kinds") or ())
        self.takes_tools = bool(info.get("takes_tools"))


class RayModel:
    """The serve process's side of one model deployed on Ray: what the HTTP app calls a worker."""

    def __init__(self, name: str, handle: Any, info: dict[str, Any], runtime: str, limits: Limits):
        self.name = name
        self.runtime = runtime
        self.limits = limits
        self.handle = handle
        self.context_length = int(info.get("context_length") or 0)
        self.defaults = dict(info.get("defaults") or {})
        self.created = int(time.time())
        # what the app asks of a model's session before it takes an option (see _ReplicaSession)
        self.sessions = [_ReplicaSession(info)]
        self.folder = Path(info["folder"])
        self.vocab_size = int(info.get("vocab_size") or 0)
        self.admitted = 0
        self.active = 0
        self.outcomes: dict[str, int] = {}
        self.nodes: dict[str, int] = {}  # answers by the node of the replica that gave them
        from collections import deque

        self.history: deque[GenerationRecord] = deque(maxlen=HISTORY)
        self._idle = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    async def start(self, job: Job) -> None:
        """Send ``job`` to a replica; returns once it started (or raises its refusal)."""
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError

        dead = (ActorDiedError, ActorUnavailableError)
        for attempt in range(DEAD_REPLICA_RETRIES + 1):
            stream = self.handle.options(stream=True).generate.remote(
                job.messages, dict(job.search), list(job.stops), job.min_tokens
            )
            try:
                kind, node = await stream.__anext__()
                if kind == "error":
                    raise _error_from(node)
                break
            except dead:
                stream.cancel()
                if attempt == DEAD_REPLICA_RETRIES:
                    raise Refused(
                        503, f"no replica of {self.name} answered", code="replica_lost", retry_after=1
                    ) from None
            except RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                raise (cause if isinstance(cause, BaseException) else SlmkError(str(exc))) from None
        self.active += 1
        started = time.perf_counter()
        self._loop.create_task(self._relay(job, stream, node, started))

    async def _relay(self, job: Job, stream: Any, node: str, started: float) -> None:
        job.outcome = "error"
        try:
            async for kind, value in stream:
                if job.cancel.is_set():
                    break
                if kind == "text":
                    if not await self._credit(job):
                        job.outcome = "stalled" if not job.cancel.is_set() else "cancelled"
                        break
                    await job.events.put(("text", value))
                elif kind == "done":
                    job.outcome = value["outcome"]
                    job.last_token_is_end = value["last_token_is_end"]
                    if value["stats"]:
                        from slmk.api import GenerationStats

                        job.stats = GenerationStats(**value["stats"])
                    if value["error"]:
                        job.error = SlmkError(value["error"])
        except Exception as exc:  # the replica died mid-answer: this answer ends with an error
            job.outcome, job.error = "error", exc
        finally:
            if job.cancel.is_set() or job.outcome == "stalled":
                stream.cancel()  # the replica's generator ends: its sequence leaves the batch
                job.outcome = "stalled" if job.outcome == "stalled" else "cancelled"
            self.active -= 1
            self.outcomes[job.outcome] = self.outcomes.get(job.outcome, 0) + 1
            self.nodes[node] = self.nodes.get(node, 0) + 1
            stats = job.stats
            self.history.append(
                GenerationRecord(
                    model=self.name,
                    outcome=job.outcome,
                    prompt_tokens=stats.prompt_tokens if stats else 0,
                    generated_tokens=stats.generated_tokens if stats else 0,
                    seconds=round(time.perf_counter() - started, 4),
                    error=str(job.error or ""),
                )
            )
            await job.events.put(("done", None))

    async def _credit(self, job: Job) -> bool:
        """Wait until the client is less than MAX_AHEAD pieces behind (False: it stalled or left)."""
        deadline = time.monotonic() + self.limits.stall_timeout_s
        while not job.credits.acquire(blocking=False):
            if job.cancel.is_set() or time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.active and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.active == 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "ray": True,
            "replicas_answered_on": dict(self.nodes),
            "active": self.active,
            "outcomes": dict(self.outcomes),
        }

    def close(self) -> None:
        pass


class RayDeployment:
    """The Ray side of ``slmk serve --ray``: connects (or starts embedded Ray), deploys, shuts down."""

    def __init__(self, address: str | None, replicas: int, num_cpus: float, temp_dir: Path | None = None):
        ray, serve = _ray()
        self._ray, self._serve = ray, serve
        self._owns = False
        self.apps: list[str] = []
        if not ray.is_initialized():
            init: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address:
                init["address"] = address
            else:
                init["_node_ip_address"] = "127.0.0.1"
                if temp_dir:
                    init["_temp_dir"] = str(temp_dir)
            try:
                ray.init(**init)
            except Exception as exc:
                raise SlmkError(
                    f"cannot start or join Ray{' at ' + address if address else ''}: {type(exc).__name__}: {exc}",
                    hint="start the cluster with `ray start --head` (docs/serve.md), or drop the address",
                ) from None
            self._owns = True
        serve.start(proxy_location="Disabled")
        self.replicas = replicas
        self.num_cpus = num_cpus

    def deploy(self, name: str, folder: Path, runtime: str, execution_provider: str | None, limits: Limits) -> RayModel:
        serve = self._serve
        deployment = serve.deployment(
            ModelReplica,
            name=f"{APP_PREFIX}{name}",
            num_replicas=self.replicas,
            ray_actor_options={"num_cpus": self.num_cpus, "runtime_env": {"env_vars": dict(RAY_ENV)}},
            # the replica's own queue answers 503: Ray Serve sends it everything it may take
            max_ongoing_requests=limits.max_batch + limits.max_queue + 1,
            health_check_period_s=2,
            health_check_timeout_s=10,
        )
        app = deployment.bind(name, str(folder), runtime, execution_provider, dataclasses.asdict(limits))
        handle = serve.run(app, name=f"{APP_PREFIX}{name}", route_prefix=None)
        self.apps.append(f"{APP_PREFIX}{name}")
        info = handle.describe.remote().result(timeout_s=600)
        return RayModel(name, handle, info, runtime, limits)

    def close(self) -> None:
        for app in self.apps:
            try:
                self._serve.delete(app)
            except Exception:  # the cluster may be gone already
                pass
        if self._owns and self._ray.is_initialized():
            try:
                self._serve.shutdown()
            finally:
                self._ray.shutdown()
        self._owns = False
