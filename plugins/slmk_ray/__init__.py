"""The ``ray`` executor: sweep tasks on a Ray cluster, or on one started embedded.

``ray`` is imported only when a session opens (``pip install 'slmk[ray]'``).

- ``address=None``: ``ray.init()`` starts an embedded single-node cluster in this
  process's session (``num_cpus`` CPUs, no dashboard, loopback only), publishing this
  machine's slmk resources; ``address="auto"`` or ``"ray://host:10001"`` joins a
  running cluster.
- A task asks for ``num_cpus`` and ``memory`` (bytes); Ray places it where they are free.
- An exclusive task (a measurement) also asks for one ``slmk_measure_slot``: every
  node publishes one, so measurements run one at a time per node.
- A task with an accelerator ("cuda") asks for one ``slmk_cuda``: only nodes whose
  probe found a usable CUDA provider publish it (``slmk ray-resources``).
- ``max_retries``: a task whose worker or node dies is run again elsewhere.
- Each result records the node it ran on: ``$SLMK_NODE_NAME`` where the node sets it,
  else host name and the start of Ray's node id.
"""

from __future__ import annotations

import json
import os
import socket
import time
from concurrent.futures import Future
from typing import Any

import click

from slmk.api import Command, Executor, ExecutorOptions, SlmkError, Task, TaskResult, UsageError, get_registry, hookimpl

MEASURE_SLOT = "slmk_measure_slot"
NODE_NAME_ENV = "SLMK_NODE_NAME"
INSTALL_HINT = "pip install 'slmk[ray]'"


def accelerator_resource(accelerator: str) -> str:
    """The custom resource a node publishes when ``accelerator`` is usable on it."""
    return f"slmk_{accelerator}"


def node_resources() -> dict[str, float]:
    """The custom resources this machine publishes: one measurement slot, and one
    ``slmk_<ep>`` for each non-CPU execution provider whose probe says it is usable here."""
    resources = {MEASURE_SLOT: 1.0}
    for name, ep in sorted(get_registry().execution_providers.items()):
        if name == "cpu":
            continue
        try:
            usable = ep.probe().usable
        except Exception:  # a broken probe publishes nothing
            usable = False
        if usable:
            resources[accelerator_resource(name)] = 1.0
    return resources


def run_remote(function, args, kwargs) -> tuple[Any, str, float]:
    """Runs inside a Ray worker: (value, node, seconds)."""
    import ray

    start = time.perf_counter()
    value = function(*args, **kwargs)
    node = os.environ.get(NODE_NAME_ENV) or f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:8]}"
    return value, node, time.perf_counter() - start


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError("the ray executor needs Ray", hint=INSTALL_HINT) from None
    return ray


class RaySession:
    def __init__(self, options: ExecutorOptions):
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray = _import_ray()
        self._ray = ray
        self._owns = False
        if ray.is_initialized():
            pass  # joined by the caller (a test module shares one session): leave it running on close
        elif options.address is None:
            # embedded: a one-node cluster for this process, on the loopback only
            init: dict[str, Any] = {
                "num_cpus": options.num_cpus,  # None: every CPU of this machine
                "resources": node_resources(),
                "include_dashboard": False,
                "log_to_driver": False,
                "_node_ip_address": "127.0.0.1",
            }
            if options.temp_dir:
                init["_temp_dir"] = str(options.temp_dir)
            ray.init(**{k: v for k, v in init.items() if v is not None})
            self._owns = True
        else:
            try:
                ray.init(address=options.address, log_to_driver=False)
            except Exception as exc:
                raise SlmkError(
                    f"cannot join the Ray cluster at {options.address}: {type(exc).__name__}: {exc}",
                    hint="start it with `ray start --head` (see docs/sweep.md), or drop the address to run embedded",
                ) from None
            self._owns = True
        if not ray.cluster_resources().get(MEASURE_SLOT):
            self.close()
            raise SlmkError(
                f"no node of the Ray cluster publishes {MEASURE_SLOT}: measurements would wait forever",
                hint=f'start each node with: ray start ... --resources "$(slmk ray-resources)" '
                f"(or --resources '{{\"{MEASURE_SLOT}\": 1}}')",
            )
        self._remote = ray.remote(run_remote)

    def submit(self, task: Task) -> Future:
        resources: dict[str, float] = {}
        if task.exclusive:
            resources[MEASURE_SLOT] = 1.0
        if task.accelerator:
            resource = accelerator_resource(task.accelerator)
            if not self._ray.cluster_resources().get(resource):
                raise SlmkError(
                    f"task {task.name} needs {task.accelerator} but no node of the Ray cluster publishes {resource}",
                    hint='start a node that has it with --resources "$(slmk ray-resources)"',
                )
            resources[resource] = 1.0
        options: dict[str, Any] = {
            "num_cpus": task.num_cpus,
            "max_retries": task.retries,
            "retry_exceptions": False,  # a task's own error is an answer, not bad luck
            "resources": resources,
            "name": task.name,
        }
        if task.memory_bytes:
            options["memory"] = int(task.memory_bytes)
        ref = self._remote.options(**options).remote(task.function, task.args, dict(task.kwargs))
        outer: Future = Future()
        outer.set_running_or_notify_cancel()

        def finished(inner: Future) -> None:
            error = inner.exception()
            if error is not None:
                # RayTaskError wraps the task's own exception; hand that on when there is one
                cause = getattr(error, "cause", None)
                outer.set_exception(cause if isinstance(cause, BaseException) else error)
                return
            value, node, seconds = inner.result()
            outer.set_result(TaskResult(value, node, seconds))

        ref.future().add_done_callback(finished)
        return outer

    def close(self) -> None:
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
        self._owns = False


def open_ray(options: ExecutorOptions) -> RaySession:
    return RaySession(options)


@click.command(name="ray-resources")
def ray_resources() -> None:
    """Print the custom Ray resources this machine publishes, as JSON for `ray start --resources`.

    \b
    ray start --head --resources "$(slmk ray-resources)"
    """
    click.echo(json.dumps(node_resources()))


@hookimpl
def slmk_executors():
    yield Executor(
        name="ray",
        description="A Ray cluster (address) or an embedded one: tasks placed by CPU, memory, "
        "measurement slot and accelerator, retried when a node dies",
        open=open_ray,
    )


@hookimpl
def slmk_commands():
    yield Command(
        "ray-resources", "Print the resources to give `ray start --resources` on this node.", lambda: ray_resources
    )
