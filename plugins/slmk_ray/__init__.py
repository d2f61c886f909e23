"""The ``ray`` executor: sweep tasks on a Ray cluster, or on one started embedded.

``ray`` is imported only when a session opens (``pip install 'slmk[ray]'``).

- ``address=None``: ``ray.init()`` starts an embedded single-node cluster in this
  process's session (``num_cpus`` CPUs, loopback only, nothing off the machine), publishing
  this machine's slmk resources; ``address="auto"`` or ``"ray://host:10001"`` joins a
  running cluster. See ``embedded_environment`` for what keeps it on the machine, and
  ``ray_temp_dir`` for where its files go.
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

import contextlib
import hashlib
import json
import os
import secrets
import socket
import tempfile
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import click

from slmk.api import Command, Executor, ExecutorOptions, SlmkError, Task, TaskResult, UsageError, hookimpl
from slmk.api.files import cache_root, temporary_environ
from slmk.api.operations import get_registry

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


#: Ray puts its AF_UNIX sockets at ``TEMP/session_<date>_<pid>/sockets/plasma_store``: about 70
#: bytes after the temp folder, and Linux allows 107 in a socket path.
MAX_TEMP_DIR_CHARS = 107 - 70
#: What Ray's API server reads as its cluster config: present (and empty), it does not ask the
#: cloud metadata services (Azure, GCP's metadata.google.internal, AWS) which cloud it runs on.
BOOTSTRAP_CONFIG = "ray_bootstrap_config.yaml"


def ray_temp_dir(options: ExecutorOptions) -> Path:
    """Where an embedded cluster keeps its session (logs, sockets, spilled objects): the sweep's
    ``temp_dir``, else ``ray`` in slmk's cache (``SLMK_CACHE_DIR`` / ``XDG_CACHE_HOME`` / ``~/.cache``).

    When that path is too long for Ray's socket paths, Ray is given a short link to it in the
    system's temporary folder instead: the files still lie in slmk's cache.
    """
    folder = Path(options.temp_dir).expanduser().absolute() if options.temp_dir else cache_root() / "ray"
    folder.mkdir(parents=True, exist_ok=True)
    if len(str(folder)) <= MAX_TEMP_DIR_CHARS:
        return folder
    tag = hashlib.sha256(str(folder).encode()).hexdigest()[:12]
    link = Path(tempfile.gettempdir()) / f"slmk-ray-{os.getuid() if hasattr(os, 'getuid') else 0}-{tag}"
    if len(str(link)) > MAX_TEMP_DIR_CHARS:
        link = Path("/tmp") / link.name
    if not (link.is_symlink() and os.path.realpath(link) == os.path.realpath(folder)):
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        with contextlib.suppress(FileExistsError):  # another slmk made the same link meanwhile
            link.symlink_to(folder, target_is_directory=True)
        if os.path.realpath(link) != os.path.realpath(folder):
            raise SlmkError(
                f"{link} is in the way of the short link to Ray's folder {folder}",
                hint=f"remove {link}, or set a shorter SLMK_CACHE_DIR / [executor] temp_dir",
            )
    return link


def embedded_environment(ray_home: Path) -> dict[str, str]:
    """The environment an embedded cluster's processes start with (Ray reads these switches
    in each of its processes, so they go in the environment its processes inherit).

    - ``RAY_USAGE_STATS_ENABLED=0``: no usage reports.
    - ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: the node's address is 127.0.0.1; otherwise Ray
      finds "its" address by routing a UDP socket toward 8.8.8.8:53 in every process.
    - ``HOME``: a folder of Ray's own under its temp folder, holding an empty
      ``ray_bootstrap_config.yaml``. Ray 2.x always starts an API server process (its
      ``dashboard.py`` with only the usage-stats module, even with ``include_dashboard=False``)
      which, without that file, asks the cloud metadata services which cloud it runs on
      (a DNS query for metadata.google.internal, HTTP to 169.254.169.254). Ray's workers get
      the user's HOME back (see ``RaySession``).
    - a token in ``RAY_AUTH_TOKEN`` (token authentication is Ray 2.60's default): Ray otherwise
      generates one and writes it to ``~/.ray/auth_token``.
    """
    ray_home.mkdir(parents=True, exist_ok=True)
    bootstrap = ray_home / BOOTSTRAP_CONFIG
    if not bootstrap.is_file():
        bootstrap.write_text("# written by slmk: an embedded Ray cluster on this machine, no cloud\n{}\n")
    env = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "HOME": str(ray_home)}
    if os.environ.get("RAY_AUTH_MODE", "token").lower() == "token" and not os.environ.get("RAY_AUTH_TOKEN"):
        env["RAY_AUTH_TOKEN"] = secrets.token_hex(16)
    return env


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError("the ray executor needs Ray", hint=INSTALL_HINT) from None
    return ray


class RaySession:
    def __init__(self, options: ExecutorOptions):
        self._owns = False
        self._environment = contextlib.ExitStack()  # Ray's switches, set while the session lives
        self._cluster_switch: bool | None = None
        ray = _import_ray()
        self._ray = ray
        if ray.is_initialized():
            pass  # joined by the caller (a test module shares one session): leave it running on close
        elif options.address is None:
            self._start_embedded(ray, options)
        else:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
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

    def _start_embedded(self, ray, options: ExecutorOptions) -> None:
        """A one-node cluster for this process, on the loopback only, its files under ``ray_temp_dir``."""
        temp_dir = ray_temp_dir(options)
        env = embedded_environment(Path(os.path.realpath(temp_dir)) / "home")
        user_home = os.environ.get("HOME") or str(Path.home())
        # the switches stay set while the session lives (this process's Ray reads some later);
        # HOME only while Ray starts its own processes: its workers get the user's back
        self._environment.enter_context(temporary_environ({k: v for k, v in env.items() if k != "HOME"}))
        import ray._private.ray_constants as ray_constants

        # what RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 sets in a process that imports Ray after it is set
        self._cluster_switch = ray_constants.ENABLE_RAY_CLUSTER
        ray_constants.ENABLE_RAY_CLUSTER = False
        init: dict[str, Any] = {
            "num_cpus": options.num_cpus,  # None: every CPU of this machine
            "resources": node_resources(),
            "include_dashboard": False,
            "log_to_driver": False,
            "_temp_dir": str(temp_dir),
            "runtime_env": {"env_vars": {"HOME": user_home}},
        }
        try:
            with temporary_environ({"HOME": env["HOME"]}):
                ray.init(**{k: v for k, v in init.items() if v is not None})
        except BaseException:
            self._restore_environment()
            raise
        self._owns = True

    def _restore_environment(self) -> None:
        if self._cluster_switch is not None:
            import ray._private.ray_constants as ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = self._cluster_switch
            self._cluster_switch = None
        self._environment.close()

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
        self._restore_environment()


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
