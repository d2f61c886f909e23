"""A separate process that installs (or removes) one model: what the lock and kill tests run.

    python tests/_install_child.py install BUILD CACHE NAME TEMPLATE_JSON [--force] [--no-exchange]
    python tests/_install_child.py remove CACHE NAME [VERSION]

``--no-exchange`` takes the path platforms without an atomic folder swap take
(macOS, Windows): the old folder is set aside before the new one moves in.
Prints the installed or removed ``name:version`` on stdout.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from slmk_foundry import installer
from slmk_system.providers import CPU

from slmk.progress import Progress
from slmk.records import InstallRequest, PromptTemplate


def wait_for_pause(process, point: str, timeout_s: float = 120.0) -> None:
    """Read the child's stderr until it announces it paused at ``point`` (see installer.PAUSE_ENV)."""
    import time

    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            raise AssertionError(f"the install ended before pausing at {point}: {''.join(seen)[-2000:]}")
        seen.append(line)
        if line.strip() == f"SLMK_TEST_PAUSED {point}":
            return
    raise AssertionError(f"no pause at {point} within {timeout_s}s")


def main(argv: list[str]) -> int:
    flags = {a for a in argv if a.startswith("--")}
    args = [a for a in argv if not a.startswith("--")]
    if "--no-exchange" in flags:
        installer.exchange = lambda a, b: False
    if args[0] == "install":
        build, cache, name, template_file = args[1:5]
        template = PromptTemplate(**json.loads(Path(template_file).read_text(encoding="utf-8")))
        model = installer.install(
            InstallRequest(
                build_dir=Path(build),
                name=name,
                execution_provider=CPU,
                template=template,
                progress=Progress(quiet=True),
                cache_dir=Path(cache),
                force="--force" in flags,
            )
        )
    else:
        cache, name = args[1:3]
        model = installer.remove(name, args[3] if len(args) > 3 else None, Path(cache))
    print(model.ref, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
