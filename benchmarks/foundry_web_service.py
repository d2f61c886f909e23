"""What Foundry Local's own web service serves, here, for a model slmk installed.

    .venv/bin/python benchmarks/foundry_web_service.py

Builds the tiny chat model at int4, installs it with slmk into a temporary Foundry
cache, loads it through slmk's foundry runtime (the SDK registers and loads it, and
answers in-process), then starts the SDK's web service
(``FoundryLocalManager.start_web_service()``, bound to 127.0.0.1) and asks it what
an application would: the model list and a chat completion under each name the model
has. Prints what came back. Loopback only, offline.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="slmk-foundry-web-"))
    os.environ.update(
        {
            "ORT_DISABLE_TELEMETRY": "1",
            "SLMK_CACHE_DIR": str(work / "slmk-cache"),
            "SLMK_FOUNDRY_CACHE": str(work / "foundry-cache"),
        }
    )
    import httpx2 as httpx

    from slmk.api.files import installed_version
    from slmk.api.operations import convert, install, open_session

    build = work / "tiny-int4"
    convert(REPO / "examples" / "tiny-chat" / "model", build, precision="int4")
    installed = install(build, "tiny-chat", cache_dir=work / "foundry-cache")
    session = open_session(installed.path, runtime="foundry", installed=installed, cache_dir=work / "foundry-cache")
    question = [{"role": "user", "content": "How many moons does Veltra have?"}]
    report: dict = {
        "platform": f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
        "foundry-local-sdk": installed_version("foundry-local-sdk"),
        "installed": installed.ref,
        "foundry_id": installed.extra.get("foundry_id") if installed.extra else None,
        "in_process_answer": "".join(session.generate(question, do_sample=False, max_new_tokens=16)),
    }
    import foundry_local_sdk as fl

    manager = fl.FoundryLocalManager.instance
    catalog = manager.get_catalog(fl.CatalogType.LOCAL)
    report["sdk_loaded_models"] = [m.id for m in catalog.get_loaded_models()]
    report["sdk_cached_models"] = [m.id for m in catalog.get_cached_models()]
    started = time.perf_counter()
    manager.start_web_service()
    report["start_web_service_s"] = round(time.perf_counter() - started, 2)
    report["urls"] = manager.urls
    base = manager.urls[0].rstrip("/")
    calls = {}
    with httpx.Client(timeout=60) as client:
        for path in ("/v1/models", "/openai/models", "/foundry/list"):
            started = time.perf_counter()
            response = client.get(base + path)
            calls[f"GET {path}"] = {
                "status": response.status_code,
                "seconds": round(time.perf_counter() - started, 2),
                "body": response.text[:400],
            }
        names = {session.model_id, installed.name, installed.ref}
        names |= set(report["sdk_loaded_models"])
        for name in sorted(names):
            body = {"model": name, "messages": question, "max_tokens": 16, "temperature": 0}
            started = time.perf_counter()
            response = client.post(base + "/v1/chat/completions", json=body)
            calls[f"POST /v1/chat/completions model={name}"] = {
                "status": response.status_code,
                "seconds": round(time.perf_counter() - started, 2),
                "body": response.text[:400],
            }
    report["calls"] = calls
    manager.stop_web_service()
    session.close()
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
