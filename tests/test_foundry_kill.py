"""SIGKILL an install (or remove) at each of its steps: the Foundry cache must show exactly
the models it showed before (to slmk, to a Foundry cache scan, to the v2 SDK catalog), and a
rerun must succeed and clean up what the killed process left.

The kill points come from the installer's documented test hook (SLMK_TEST_PAUSE_AT): the
child announces the step on stderr and sleeps there until it is killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from _install_child import wait_for_pause
from slmk_foundry import installer
from test_foundry import CHATML, foundry_visible, registered, snapshot

from slmk.fsutil import TMP_PREFIX

CHILD = Path(__file__).with_name("_install_child.py")


@pytest.fixture(scope="module")
def build(tiny_build) -> Path:
    return tiny_build("int4")


@pytest.fixture
def template_file(tmp_path) -> Path:
    path = tmp_path / "template.json"
    path.write_text(json.dumps(CHATML.to_foundry()))
    return path


def child(*args: str, pause: str | None = None) -> subprocess.Popen:
    env = dict(os.environ)
    if pause:
        env.update({installer.PAUSE_ENV: pause, "SLMK_TEST_PAUSE_S": "120"})
    return subprocess.Popen(
        [sys.executable, str(CHILD), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def run_child(*args: str) -> str:
    done = subprocess.run([sys.executable, str(CHILD), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def kill_at(point: str, *args: str) -> None:
    process = child(*args, pause=point)
    try:
        wait_for_pause(process, point)
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL


def state(cache: Path) -> tuple:
    """Everything a user or a Foundry generation can see of the installed models."""
    return ([m.ref for m in installer.list_installed(cache)], foundry_visible(cache), registered(cache))


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "slmk").iterdir() if p.name.startswith(TMP_PREFIX))


@pytest.mark.slow
@pytest.mark.parametrize("point", ["copied", "checked", "renamed"])
def test_killed_install_leaves_the_cache_as_it_was(build, tmp_path, template_file, point):
    cache = tmp_path / "cache"
    install = ("install", str(build), str(cache), "tiny", str(template_file))
    assert run_child(*install) == "tiny:1"
    before, files_before = state(cache), snapshot(cache)

    kill_at(point, *install)
    assert state(cache) == before
    assert leftovers(cache) or point == "renamed"  # the staging folder (or a marked one) stays until the next run

    assert run_child(*install) == "tiny:2"  # the rerun succeeds and cleans up
    assert leftovers(cache) == []
    refs, visible, registrations = state(cache)
    assert refs == ["tiny:1", "tiny:2"] and len(visible) == 2
    assert set(registrations) == {"tiny-generic-cpu:1", "tiny-generic-cpu:2"}
    assert {k: v for k, v in snapshot(cache).items() if "tiny-generic-cpu-1/" in k} == {
        k: v for k, v in files_before.items() if "tiny-generic-cpu-1/" in k
    }  # the other model untouched


def test_install_killed_after_commit_is_complete_and_registered_by_the_next_run(build, tmp_path, template_file):
    cache = tmp_path / "cache"
    install = ("install", str(build), str(cache), "tiny", str(template_file))
    kill_at("committed", *install)
    refs, visible, registrations = state(cache)
    assert refs == ["tiny:1"] and list(visible.values()) == ["tiny"]  # the files committed ...
    assert registrations == {}  # ... the v2 registration had not happened yet
    assert run_child(*install) == "tiny:2"
    assert set(registered(cache)) == {"tiny-generic-cpu:1", "tiny-generic-cpu:2"}


@pytest.mark.slow
@pytest.mark.parametrize("swap", ["exchange", "no-exchange"])
@pytest.mark.parametrize("point", ["checked", "renamed", "committed"])
def test_killed_forced_replace_shows_the_old_or_the_new_model_never_none(build, tmp_path, template_file, swap, point):
    """``--no-exchange`` takes the macOS/Windows path (no atomic folder swap): the new copy
    is committed beside the old one, which is dropped after."""
    cache = tmp_path / "cache"
    install = ("install", str(build), str(cache), "tiny", str(template_file))
    assert run_child(*install) == "tiny:1"
    _, visible_before, registrations_before = state(cache)
    old = installer.list_installed(cache)[0].extra["installed_at"]
    flags = ("--force",) + (("--no-exchange",) if swap == "no-exchange" else ())

    kill_at(point, *install, *flags)
    refs, visible, registrations = state(cache)
    assert refs == ["tiny:1"] and set(registrations) == set(registrations_before)
    shown = installer.list_installed(cache)[0]
    committed = point == "committed" or (swap == "exchange" and point == "renamed")  # the swap is the commit
    assert (shown.extra["installed_at"] > old) == committed
    if not committed:
        assert visible == visible_before and registrations == registrations_before
    elif swap == "exchange":
        assert visible == visible_before  # same folder, new files
    else:
        assert len(visible) == 2  # the new copy beside the old one, which the next run drops

    assert run_child(*install, *flags) == "tiny:1"
    assert leftovers(cache) == []
    refs, visible, registrations = state(cache)
    assert refs == ["tiny:1"] and len(visible) == 1
    assert registrations == {"tiny-generic-cpu:1": str(installer.list_installed(cache)[0].path)}


@pytest.mark.slow
def test_killed_remove_is_finished_by_the_next_run(build, tmp_path, template_file):
    cache = tmp_path / "cache"
    install = ("install", str(build), str(cache), "tiny", str(template_file))
    assert run_child(*install) == "tiny:1"
    assert run_child(*install) == "tiny:2"
    kill_at("removed", "remove", str(cache), "tiny", "2")
    refs, visible, _ = state(cache)
    assert refs == ["tiny:1"] and len(visible) == 1  # the folder left in one rename
    assert run_child("remove", str(cache), "tiny", "1") == "tiny:1"
    assert state(cache) == ([], {}, {}) and leftovers(cache) == []
