"""``slmk serve``: the command. Heavy imports (FastAPI, uvicorn, runtimes) happen when it runs."""

from __future__ import annotations

from pathlib import Path

import click

DEFAULT_PORT = 8000


def how_to_call(url: str, model: str, api_key: str | None) -> str:
    """Copy-paste examples for a running endpoint: curl and the openai client."""
    auth = ' -H "Authorization: Bearer $SLMK_API_KEY"' if api_key else ""
    key = 'os.environ["SLMK_API_KEY"]' if api_key else '"unused"'
    return (
        f"  curl {url}/v1/chat/completions{auth} -H 'Content-Type: application/json' \\\n"
        f'    -d \'{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello"}}]}}\'\n'
        "\n"
        "  from openai import OpenAI\n"
        f'  client = OpenAI(base_url="{url}/v1", api_key={key})\n'
        "  reply = client.chat.completions.create(\n"
        f'      model="{model}", messages=[{{"role": "user", "content": "Hello"}}]\n'
        "  )\n"
        "  print(reply.choices[0].message.content)"
    )


@click.command(name="serve")
@click.argument("targets", nargs=-1, required=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (others: warned).")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True, help="Port (0: any free one)."
)
@click.option(
    "--api-key",
    envvar="SLMK_API_KEY",
    help="Require `Authorization: Bearer KEY` on every route but /health (also: $SLMK_API_KEY).",
)
@click.option("--runtime", help="Runtime plugin that loads the models [default: slmk.toml runtime, ortgenai].")
@click.option("--ep", "execution_provider", help="Execution provider (default: the one each model was built for).")
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Answers per model decoded together on one copy of the weights (continuous batching).",
)
@click.option(
    "--parallel",
    hidden=True,
    type=int,
    help="Removed: use --max-batch (one copy of the model decodes several answers together).",
)
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[ADDRESS]",
    help="Run each model as a Ray Serve deployment: on the cluster at ADDRESS (host:port), "
    "or on an embedded Ray without one.",
)
@click.option(
    "--replicas",
    type=click.IntRange(min=1),
    help="With --ray: replicas per model, placed on the cluster's nodes, each batching its own requests [default: 1].",
)
@click.option(
    "--replica-cpus",
    type=click.FloatRange(min=0, min_open=True),
    help="With --ray: CPUs Ray reserves for each replica [default: 1].",
)
@click.option(
    "--max-queue",
    type=click.IntRange(min=0),
    default=16,
    show_default=True,
    help="Requests waiting per model; one more gets 503.",
)
@click.option(
    "--queue-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds a request may wait for its model; then 503.",
)
@click.option(
    "--stall-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds a stream waits for a client that stopped reading; then it is cancelled.",
)
@click.option(
    "--max-tokens-limit",
    type=click.IntRange(min=1),
    default=2048,
    show_default=True,
    help="Largest max_tokens a request may ask for (and the default).",
)
@click.option(
    "--max-body-bytes",
    type=click.IntRange(min=1),
    default=1 << 20,
    show_default=True,
    help="Largest request body; larger gets 413.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Open connections at most; more get 503.",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    help="The installer's cache folder where installed names are looked up (default: slmk.toml install.cache_dir, "
    "else the installer's own default).",
)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="warning",
    show_default=True,
    help="Log level (info: one line per request with its model, tokens, time to first token and total).",
)
@click.option(
    "--cors-origin",
    "cors_origins",
    multiple=True,
    help="Let browser pages from this origin call the API (repeatable; `*`: any). Off by default.",
)
@click.pass_context
def serve_command(
    ctx: click.Context,
    targets,
    host,
    port,
    api_key,
    runtime,
    execution_provider,
    max_batch,
    parallel,
    ray_address,
    replicas,
    replica_cpus,
    max_queue,
    queue_timeout,
    stall_timeout,
    max_tokens_limit,
    max_body_bytes,
    max_connections,
    cache_dir,
    log_level,
    cors_origins,
) -> None:
    """Serve models over an OpenAI-compatible HTTP API (TARGET: build folder, installed NAME, or NAME=TARGET).

    \b
    Routes: /v1/models, /v1/chat/completions (streamed or not), /v1/completions, /health, /metrics.
    Listens on 127.0.0.1 only unless --host says otherwise. Ctrl-C stops it.

    \b
    Concurrent requests to a model are decoded together (continuous batching, --max-batch).

    \b
    slmk serve build/tiny-int4
    slmk serve tiny=build/tiny-int4 chat=tiny-chat --api-key "$KEY" --port 8080
    slmk serve build/tiny-int4 --ray 10.0.0.5:6379 --replicas 2
    """
    from .server import ServeOptions, is_loopback, serve
    from .workers import Limits

    if parallel is not None:
        from slmk.api import UsageError

        raise UsageError(
            "--parallel was removed: it loaded a copy of the model per answer",
            hint="use --max-batch N: N answers decoded together on one copy",
        )
    ray = None
    if ray_address is not None:
        from .server import RayOptions

        ray = RayOptions(address=ray_address or None, replicas=replicas or 1, num_cpus=replica_cpus or 1.0)
    elif replicas is not None or replica_cpus is not None:
        from slmk.api import UsageError

        raise UsageError("--replicas and --replica-cpus need --ray", hint="add --ray (embedded) or --ray HOST:PORT")
    settings = _settings(ctx, runtime, cache_dir)
    if not is_loopback(host):
        click.echo(
            f"warning: listening on {host}: other machines can reach this endpoint"
            + ("" if api_key else " and nothing stops them (no --api-key)"),
            err=True,
        )
    limits = Limits(
        max_queue=max_queue,
        max_batch=max_batch,
        max_tokens_limit=max_tokens_limit,
        max_body_bytes=max_body_bytes,
        queue_timeout_s=queue_timeout,
        stall_timeout_s=stall_timeout,
        max_connections=max_connections,
    )
    options = ServeOptions(
        host=host,
        port=port,
        api_key=api_key,
        runtime=settings["runtime"],
        execution_provider=execution_provider,
        limits=limits,
        installer=settings["installer"],
        cache_dir=settings["cache_dir"],
        log_level=log_level,
        ray=ray,
        cors_origins=cors_origins,
    )
    server = serve(targets, options)
    for note in server.notes:
        click.echo(f"warning: {note}", err=True)
    click.echo(f"serving {', '.join(server.models)} at {server.base_url} ({settings['runtime']}); Ctrl-C stops")
    click.echo(how_to_call(server.url, server.models[0], api_key))
    server.wait()


def _settings(ctx: click.Context, runtime: str | None, cache_dir: str | None) -> dict:
    """runtime, installer and Foundry cache: the command line, else slmk.toml (when the kernel offers it)."""
    state = ctx.obj
    values = {"runtime": runtime, "install.cache_dir": cache_dir}
    settings_of = getattr(state, "settings", None)
    if callable(settings_of):
        settings = settings_of(values)
        cache = settings["install.cache_dir"]
        return {
            "runtime": settings["runtime"],
            "installer": settings["installer"],
            "cache_dir": Path(cache).expanduser() if cache else None,
        }
    return {
        "runtime": runtime or "ortgenai",
        "installer": "foundry",
        "cache_dir": Path(cache_dir).expanduser() if cache_dir else None,
    }
