"""slmk_foundry: real installs into a temporary Foundry Local cache, chatted with through the
real Foundry Local SDK (in-process, offline) and through onnxruntime-genai on the same folder."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import slmk_foundry
import slmk_ortgenai
import slmk_system
from _install_child import wait_for_pause
from slmk_foundry import installer, layout, runtime, sdk
from slmk_system.providers import CPU

from slmk import app
from slmk.errors import SlmkError, StepFailed, UsageError
from slmk.fsutil import TMP_PREFIX
from slmk.progress import Progress
from slmk.records import InstallRequest, PromptTemplate
from slmk.testing import make_registry

GREEDY = {"do_sample": False}
CHILD = Path(__file__).with_name("_install_child.py")

#: The tiny model's chat template is ChatML; this is its legacy PromptTemplate. The
#: layout test checks it renders exactly what the model's own chat template renders.
CHATML = PromptTemplate(
    system="<|im_start|>system\n{Content}<|im_end|>\n",
    user="<|im_start|>user\n{Content}<|im_end|>\n",
    assistant="<|im_start|>assistant\n{Content}<|im_end|>\n",
    prompt="<|im_start|>user\n{Content}<|im_end|>\n<|im_start|>assistant\n",
    source="test:chatml",
)
CONVERSATION = [
    {"role": "system", "content": "You answer questions about Veltra."},
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": "Hello, ask me about Veltra."},
    {"role": "user", "content": "How many moons does Veltra have?"},
]


@pytest.fixture(scope="module")
def registry():
    return make_registry(slmk_system, slmk_ortgenai, slmk_foundry)


@pytest.fixture(scope="module")
def build(tiny_build) -> Path:
    return tiny_build("int4")


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "foundry-cache"


def install(
    build: Path,
    cache: Path,
    name: str = "tiny",
    *,
    force: bool = False,
    template: PromptTemplate = CHATML,
    chat_template: str | None = None,
):
    return installer.install(
        InstallRequest(
            build_dir=build,
            name=name,
            execution_provider=CPU,
            template=template,
            progress=Progress(quiet=True),
            cache_dir=cache,
            force=force,
            chat_template=chat_template,
        )
    )


def snapshot(cache: Path) -> dict[str, str]:
    """Every file in the cache with a hash of its content (lock files are bookkeeping, left out)."""
    if not cache.exists():
        return {}
    return {
        p.relative_to(cache).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()[:16]
        for p in sorted(cache.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


def foundry_visible(cache: Path) -> dict[str, str]:
    """What a Foundry cache scan sees (both generations: recursive, any folder with
    genai_config.json + inference_model.json and no download.tmp): folder -> Name."""
    found = {}
    for config in cache.rglob("genai_config.json"):
        leaf = config.parent
        if (leaf / "inference_model.json").is_file() and not (leaf / "download.tmp").exists():
            found[leaf.relative_to(cache).as_posix()] = json.loads((leaf / "inference_model.json").read_text())["Name"]
    return found


def registered(cache: Path) -> dict[str, str]:
    return {model_id: str(path) for model_id, path in sdk.registrations(cache).items()}


def answer(session, messages, **search) -> str:
    return "".join(session.generate(messages, **{**GREEDY, **search}))


# ------------------------------------------------------------------ the whole round trip
def test_install_list_chat_with_foundry_and_ortgenai_then_remove(build, cache, registry, tiny_eval):
    neighbour = install(build, cache, "neighbour")  # another model: it must never be touched
    before, visible_before, registered_before = snapshot(cache), foundry_visible(cache), registered(cache)

    start = time.perf_counter()
    model = app.install(build, "tiny-chat", cache_dir=cache, registry=registry, progress=Progress(quiet=True))
    install_s = time.perf_counter() - start
    assert install_s < 30

    listed = {m.ref: m for m in registry.installers["foundry"].list(cache)}
    assert set(listed) == {"neighbour:1", "tiny-chat:1"}
    item = listed["tiny-chat:1"]
    assert (item.name, item.version, item.precision, item.execution_provider) == ("tiny-chat", "1", "int4", "cpu")
    assert item.size_bytes > 100_000 and item.path == model.path
    assert {"foundry", "ortgenai"} <= set(item.runtimes)
    assert item.path == cache / "slmk" / "tiny-chat-generic-cpu-1" / "v1"
    assert item.extra["foundry_id"] == "tiny-chat-generic-cpu:1"
    assert registered(cache)["tiny-chat-generic-cpu:1"] == str(item.path)
    assert foundry_visible(cache)["slmk/tiny-chat-generic-cpu-1/v1"] == "tiny-chat"

    question = tiny_eval[0]
    # The lead's `slmk run NAME --runtime foundry|ortgenai` path: find it by name, open the folder.
    folder, found = app.resolve_target("tiny-chat", cache_dir=cache, registry=registry)
    assert found.ref == "tiny-chat:1" and folder == item.path
    foundry = app.open_session(folder, runtime="foundry", installed=found, cache_dir=cache, registry=registry)
    try:
        assert isinstance(foundry, runtime.FoundrySession)
        pieces = list(foundry.generate(question["messages"], **GREEDY, max_new_tokens=40))
        foundry_answer, foundry_stats = "".join(pieces).strip(), foundry.last_stats
        conversation_answer = answer(foundry, CONVERSATION, max_new_tokens=40)
        conversation_stats = foundry.last_stats
    finally:
        foundry.close()
    assert foundry_answer, "Foundry Local answered nothing"
    assert len(pieces) > 1, "the SDK streams one piece per token"
    assert question["expected"].lower() in foundry_answer.lower(), foundry_answer
    assert foundry_stats.prompt_tokens > 5 and 0 < foundry_stats.generated_tokens <= 40
    assert 0 < foundry_stats.time_to_first_token_s <= foundry_stats.total_s

    ortgenai = app.open_session(folder, runtime="ortgenai", installed=found, cache_dir=cache, registry=registry)
    try:
        ort_answer = answer(ortgenai, question["messages"], max_new_tokens=40).strip()
        ort_stats = ortgenai.last_stats
        ort_conversation = answer(ortgenai, CONVERSATION, max_new_tokens=40)
        ort_conversation_stats = ortgenai.last_stats
    finally:
        ortgenai.close()
    # Same files, same chat template, same greedy search: both runtimes say the same thing.
    assert ort_answer == foundry_answer
    assert ort_stats.prompt_tokens == foundry_stats.prompt_tokens
    assert ort_conversation == conversation_answer
    assert ort_conversation_stats.prompt_tokens == conversation_stats.prompt_tokens

    removed = registry.installers["foundry"].remove("tiny-chat", None, cache)
    assert removed.ref == "tiny-chat:1"
    assert snapshot(cache) == before  # files, registrations file included, exactly as before
    assert foundry_visible(cache) == visible_before and registered(cache) == registered_before
    assert [m.ref for m in installer.list_installed(cache)] == [neighbour.ref]


def test_foundry_runtime_runs_a_plain_build_without_touching_the_user_cache(build, registry, tiny_eval):
    user_cache = Path(os.environ["SLMK_FOUNDRY_CACHE"])
    before = snapshot(user_cache)
    session = app.open_session(build, runtime="foundry", registry=registry)
    try:
        text = answer(session, tiny_eval[1]["messages"], max_new_tokens=30)
        with pytest.raises(UsageError, match="unknown search option"):
            session.generate(tiny_eval[1]["messages"], beams=2)
        with pytest.raises(UsageError, match="repetition_penalty"):
            session.generate(tiny_eval[1]["messages"], repetition_penalty=1.77)
        with pytest.raises(UsageError, match="role"):
            session.generate([{"role": "tool", "content": "x"}])
        short = answer(session, tiny_eval[1]["messages"], max_new_tokens=3)
        assert session.last_stats.generated_tokens <= 3
    finally:
        session.close()
    assert text.strip() and short
    assert snapshot(user_cache) == before
    assert str(build) in registered(runtime.builds_cache()).values()
    with pytest.raises(SlmkError, match="closed"):
        session.generate(tiny_eval[1]["messages"])


# ------------------------------------------------------------------ versions, force, names
def test_versions_force_and_remove_rules(build, cache):
    first, second = install(build, cache), install(build, cache)
    assert (first.ref, second.ref) == ("tiny:1", "tiny:2")
    assert second.extra["foundry_id"] == "tiny-generic-cpu:2"
    replaced = install(build, cache, force=True)  # replaces the newest version, keeping its number
    assert replaced.ref == "tiny:2" and replaced.extra["installed_at"] > second.extra["installed_at"]
    assert [m.ref for m in installer.list_installed(cache)] == ["tiny:1", "tiny:2"]
    assert set(registered(cache)) == {"tiny-generic-cpu:1", "tiny-generic-cpu:2"}
    assert install(build, cache, "fresh", force=True).ref == "fresh:1"  # force on a new name: version 1

    assert installer.remove("tiny", None, cache).ref == "tiny:2"  # no version: the newest
    with pytest.raises(UsageError) as unknown:
        installer.remove("tiny", "7", cache)
    assert "installed: fresh:1, tiny:1" in unknown.value.hint
    with pytest.raises(UsageError, match="no installed model 'nope'"):
        installer.remove("nope", None, cache)
    with pytest.raises(UsageError, match="not a number"):
        installer.remove("tiny", "latest", cache)
    assert installer.remove("tiny", "1", cache).ref == "tiny:1"
    assert [m.ref for m in installer.list_installed(cache)] == ["fresh:1"]
    assert set(registered(cache)) == {"fresh-generic-cpu:1"}
    assert not [p for p in (cache / "slmk").iterdir() if p.name.startswith(TMP_PREFIX)]


@pytest.mark.parametrize(
    "bad", ["../evil", "a/b", "a\\b", "", "-lead", "x" * 65, "has space", "a..b", "name:1", "CON", ".hidden"]
)
def test_bad_names_are_refused_before_anything_is_written(build, cache, bad):
    with pytest.raises(UsageError) as refused:
        install(build, cache, bad)
    assert refused.value.hint and "letters, digits" in refused.value.hint
    assert not cache.exists()


def test_bad_input_is_one_clear_error(build, cache, tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        install(tmp_path / "missing", cache)
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    with pytest.raises(UsageError, match="Hugging Face folder"):
        install(hf, cache)
    with pytest.raises(UsageError, match="no prompt template"):
        installer.install(
            InstallRequest(
                build_dir=build,
                name="t",
                execution_provider=CPU,
                template=None,
                progress=Progress(quiet=True),
                cache_dir=cache,
            )
        )
    broken = PromptTemplate(system="{Content}", user="{Content}", assistant="", prompt="{Content}{Content}")
    with pytest.raises(UsageError, match="'assistant' holds"):
        install(build, cache, template=broken)
    # A template the chat template does not render (a Phi-3 template on a ChatML model, the known
    # catalog bug) is refused after staging: nothing is left in the cache.
    phi3 = PromptTemplate(
        system="<|system|>\n{Content}<|end|>\n",
        user="<|user|>\n{Content}<|end|>\n",
        assistant="<|assistant|>\n{Content}<|end|>\n",
        prompt="<|user|>\n{Content}<|end|>\n<|assistant|>\n",
    )
    with pytest.raises(StepFailed, match="does not match the model's chat template"):
        install(build, cache, template=phi3)
    assert installer.list_installed(cache) == [] and foundry_visible(cache) == {}
    assert [p.name for p in (cache / "slmk").iterdir()] == [".slmk-install.lock"]


def test_chat_template_replacement_breaks_hard_links_to_the_build(build, cache):
    original = (build / "tokenizer_config.json").read_bytes()
    template = json.loads(original).get("chat_template") or (build / "chat_template.jinja").read_text()
    marked = template + "{# installed by slmk #}"
    model = install(build, cache, chat_template=marked)
    assert "{# installed by slmk #}" in (
        json.loads((model.path / "tokenizer_config.json").read_text()).get("chat_template")
        or (model.path / "chat_template.jinja").read_text()
    )
    assert (build / "tokenizer_config.json").read_bytes() == original  # the build is unchanged


# ------------------------------------------------------------------ the legacy CLI (Windows/macOS)
def test_legacy_cli_layout_documented_rules_linux_stand_in(build, cache):
    """The legacy `foundry` CLI does not run on Linux: check the layout it documents instead.

    Rules (Foundry Local "compile Hugging Face models" how-to and the cache it downloads
    into): a model is a subfolder of the cache holding genai_config.json, the ONNX
    files, the tokenizer files and inference_model.json = {"Name", "PromptTemplate"
    with system/user/assistant/prompt, each holding {Content}}; a folder holding
    download.tmp is an unfinished download and is skipped.
    """
    model = install(build, cache, "legacy-check")
    leaf = model.path
    assert leaf.parent.parent.parent == cache and leaf.parent.parent.name == "slmk"  # <cache>/<publisher>/<id>/v<N>
    for required in (
        "genai_config.json",
        "model.onnx",
        "model.onnx.data",
        "tokenizer.json",
        "tokenizer_config.json",
        "inference_model.json",
    ):
        assert (leaf / required).is_file(), required
    assert not (leaf / "download.tmp").exists()
    inference = json.loads((leaf / "inference_model.json").read_text(encoding="utf-8"))
    assert set(inference) == {"Name", "PromptTemplate"} and inference["Name"] == "legacy-check"
    assert set(inference["PromptTemplate"]) == {"system", "user", "assistant", "prompt"}
    for key, piece in inference["PromptTemplate"].items():
        assert piece.count("{Content}") == 1, key
    assert foundry_visible(cache) == {"slmk/legacy-check-generic-cpu-1/v1": "legacy-check"}
    genai = json.loads((leaf / "genai_config.json").read_text())
    assert (leaf / genai["model"]["decoder"]["filename"]).is_file()

    # What the legacy CLI renders from PromptTemplate is what the v2 SDK and onnxruntime-genai
    # render from the chat template: one prompt for both generations.
    legacy = PromptTemplate(**inference["PromptTemplate"])
    session = app.open_session(leaf, runtime="ortgenai")
    try:
        assert legacy.render(CONVERSATION) == session.render_prompt(CONVERSATION)
        assert legacy.render(CONVERSATION[-1:]) == session.render_prompt(CONVERSATION[-1:])
    finally:
        session.close()


# ------------------------------------------------------------------ cache location
def test_cache_location_order_with_stand_in_foundry_cli(tmp_path, monkeypatch):
    """`foundry cache location` is asked only when no cache is configured; the script on PATH
    stands in for the Windows/macOS CLI and prints what that CLI prints."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "foundry"
    fake.write_text(
        "#!/bin/sh\necho 'Service is Started on http://127.0.0.1:5273/'\n"
        f"echo '💾 Cache directory path: {tmp_path / 'from-cli'}'\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLMK_FOUNDRY_CACHE", str(tmp_path / "from-env"))
    assert layout.locate(tmp_path / "given") == tmp_path / "given"
    assert layout.locate(None) == tmp_path / "from-env"
    monkeypatch.delenv("SLMK_FOUNDRY_CACHE")
    assert layout.locate(None) == tmp_path / "from-cli"
    fake.write_text("#!/bin/sh\nexit 3\n")
    assert layout.locate(None) == Path("~/.foundry/cache/models").expanduser()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert layout.locate(None) == Path("~/.foundry/cache/models").expanduser()


@pytest.mark.parametrize(
    "output, expected",
    [
        ("💾 Cache directory path: C:\\Users\\me\\.foundry\\cache\\models\n", "C:\\Users\\me\\.foundry\\cache\\models"),
        ("Cache directory path: /home/me/.foundry/cache/models", "/home/me/.foundry/cache/models"),
        ("/srv/foundry/models\n", "/srv/foundry/models"),
        ("no cache here", None),
    ],
)
def test_parse_cache_location(output, expected):
    parsed = layout.parse_cache_location(output)
    assert (str(parsed) if parsed else None) == (str(Path(expected)) if expected else None)


# ------------------------------------------------------------------ concurrency
@pytest.mark.slow
def test_two_installs_at_once_both_succeed_one_waiting_for_the_lock(build, cache, tmp_path):
    template_file = tmp_path / "template.json"
    template_file.write_text(json.dumps(CHATML.to_foundry()))
    command = [sys.executable, str(CHILD), "install", str(build), str(cache), "tiny", str(template_file)]
    # The first holds the cache lock for 2 s (paused after copying); the second must wait for it.
    first = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, installer.PAUSE_ENV: "copied", "SLMK_TEST_PAUSE_S": "2"},
    )
    wait_for_pause(first, "copied")
    start = time.perf_counter()
    second = subprocess.run(command, capture_output=True, text=True, timeout=120)
    waited = time.perf_counter() - start
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0 and second.returncode == 0, err + second.stderr
    assert {out.strip(), second.stdout.strip()} == {"tiny:1", "tiny:2"}
    assert waited > 1.0
    assert [m.ref for m in installer.list_installed(cache)] == ["tiny:1", "tiny:2"]
    assert set(registered(cache)) == {"tiny-generic-cpu:1", "tiny-generic-cpu:2"}
    assert len(foundry_visible(cache)) == 2
    assert not [p for p in (cache / "slmk").iterdir() if p.name.startswith(TMP_PREFIX)]
