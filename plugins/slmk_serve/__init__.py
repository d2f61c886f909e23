"""slmk serve: an OpenAI-compatible HTTP endpoint for slmk builds and installed models.

- command ``slmk serve TARGET...``: serves build folders or installed models through any
  runtime plugin (``--runtime ortgenai|foundry``), on 127.0.0.1 by default;
- runtime ``openai-endpoint``: a session that talks to any OpenAI-compatible endpoint
  (slmk serve, Foundry Local's service, Ollama), so ``bench`` and ``validate`` measure it.

Module level stays light: FastAPI, uvicorn and openai are imported when a server
starts or an endpoint session opens (the ``serve`` extra: ``pip install 'slmk[serve]'``).
"""

from __future__ import annotations

from slmk.api import Command, Runtime, hookimpl

ENDPOINT_RUNTIME = "openai-endpoint"


def _load_endpoint(request):
    from .endpoint import load

    return load(request)


def _serve_command():
    from .cli import serve_command

    return serve_command


@hookimpl
def slmk_commands():
    yield Command(
        "serve", "Serve builds or installed models over the OpenAI-compatible HTTP API (127.0.0.1).", _serve_command
    )


@hookimpl
def slmk_runtimes():
    yield Runtime(
        name=ENDPOINT_RUNTIME,
        description="any OpenAI-compatible endpoint (options base_url, model, api_key): streams, counts usage",
        load=_load_endpoint,
    )
