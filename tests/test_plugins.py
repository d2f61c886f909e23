"""The plugin manager: discovery through real entry points, isolation, conflicts."""

from __future__ import annotations

import json
import textwrap

import pytest

from slmk import hookimpl
from slmk.errors import SlmkError
from slmk.records import ExecutionProvider, Usability
from slmk.testing import make_registry


def _ep(name: str) -> ExecutionProvider:
    return ExecutionProvider(
        name=name,
        description="test",
        build_precisions=("int4",),
        run_precisions=("int4",),
        probe=lambda: Usability(True, "always"),
    )


class ProvidesAlpha:
    @hookimpl
    def slmk_execution_providers(self):
        yield _ep("alpha")


class AlsoProvidesAlpha:
    @hookimpl
    def slmk_execution_providers(self):
        yield _ep("alpha")


class RaisesInHook:
    @hookimpl
    def slmk_execution_providers(self):
        raise RuntimeError("driver exploded")


class ReturnsWrongType:
    @hookimpl
    def slmk_execution_providers(self):
        yield "not a record"


def test_make_registry_holds_only_named_plugins():
    registry = make_registry(ProvidesAlpha())
    assert list(registry.execution_providers) == ["alpha"]
    assert registry.owner("slmk_execution_providers", "alpha") == "ProvidesAlpha"


def test_a_name_conflict_keeps_the_first_and_reports_the_second_naming_both():
    registry = make_registry(ProvidesAlpha(), AlsoProvidesAlpha())
    assert list(registry.execution_providers) == ["alpha"]
    assert registry.owner("slmk_execution_providers", "alpha") == "ProvidesAlpha"
    errors = {info.name: info.errors for info in registry.plugin_infos()}
    assert errors["ProvidesAlpha"] == []
    (message,) = errors["AlsoProvidesAlpha"]
    assert "'alpha'" in message and "'ProvidesAlpha'" in message and "SLMK_DISABLE_PLUGINS" in message


def test_plugin_raising_in_hook_is_reported_and_others_still_work():
    registry = make_registry(RaisesInHook(), ProvidesAlpha(), ReturnsWrongType())
    assert list(registry.execution_providers) == ["alpha"]
    errors = {info.name: info.errors for info in registry.plugin_infos()}
    assert any("slmk_execution_providers" in e and "driver exploded" in e for e in errors["RaisesInHook"])
    assert any("expected ExecutionProvider" in e for e in errors["ReturnsWrongType"])


def test_unknown_record_name_lists_known_ones():
    registry = make_registry(ProvidesAlpha())
    with pytest.raises(SlmkError, match=r"unknown execution provider 'beta'.*known: alpha"):
        registry.get("slmk_execution_providers", "beta", "execution provider")


def _write_distribution(site, dist: str, module: str, entry_name: str, source: str) -> None:
    """A real installed distribution: a module plus the dist-info pip would write."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[slmk]\n{entry_name} = {module}\n")
    (info / "RECORD").write_text("")


@pytest.fixture
def third_party_site(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    _write_distribution(
        site,
        "slmk-npu-demo",
        "slmk_npu_demo",
        "npu-demo",
        """
        from slmk.api import ExecutionProvider, Usability, hookimpl

        @hookimpl
        def slmk_execution_providers():
            yield ExecutionProvider(
                name="npu-demo", description="a third-party provider",
                build_precisions=("int4",), run_precisions=("int4",),
                probe=lambda: Usability(False, "no NPU here", fix="install the NPU driver"),
            )
    """,
    )
    _write_distribution(
        site,
        "slmk-broken",
        "slmk_broken_demo",
        "broken-demo",
        """
        raise ImportError("this plugin needs a library that is not installed")
    """,
    )
    return site


def test_third_party_plugin_found_through_entry_point_and_broken_one_skipped(run_slmk, third_party_site):
    result = run_slmk("plugins", "--json", env={"PYTHONPATH": str(third_party_site)})
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    good = plugins["npu-demo"]
    assert good["loaded"] and good["distribution"] == "slmk-npu-demo" and good["version"] == "1.2.3"
    assert good["records"]["slmk_execution_providers"] == ["npu-demo"]
    broken = plugins["broken-demo"]
    assert not broken["loaded"]
    assert "ImportError: this plugin needs a library" in broken["errors"][0]
    assert plugins["system"]["loaded"], "built-in plugins still load"


def test_disable_plugins_env_var_skips_named_plugin(run_slmk, third_party_site):
    result = run_slmk(
        "plugins", "--json", env={"PYTHONPATH": str(third_party_site), "SLMK_DISABLE_PLUGINS": "npu-demo,broken-demo"}
    )
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert not plugins["npu-demo"]["loaded"] and "SLMK_DISABLE_PLUGINS" in plugins["npu-demo"]["errors"][0]
    assert plugins["broken-demo"]["errors"] == ["disabled by SLMK_DISABLE_PLUGINS"]


def test_doctor_reports_broken_plugin_without_failing(run_slmk, third_party_site):
    result = run_slmk("doctor", "--json", env={"PYTHONPATH": str(third_party_site)})
    report = json.loads(result.stdout)
    names = {c["name"]: c for c in report["checks"]}
    assert (
        "broken-demo" in names["plugin:broken-demo"]["detail"] or "ImportError" in names["plugin:broken-demo"]["detail"]
    )
    assert names["ep:npu-demo"]["status"] == "warn" and names["ep:npu-demo"]["fix"] == "install the NPU driver"


@pytest.fixture
def hostile_site(tmp_path):
    """Plugins that collide with built-ins or try to end the process."""
    site = tmp_path / "hostile"
    site.mkdir()
    # an entry point named like the built-in `foundry`, bringing an installer named foundry too
    _write_distribution(
        site,
        "slmk-fake-foundry",
        "slmk_fake_foundry",
        "foundry",
        """
        from slmk.api import Installer, hookimpl

        @hookimpl
        def slmk_installers():
            yield Installer(name="foundry", description="not the real one", install=None, list=lambda c: [],
                            remove=None, locate=lambda c: c)
    """,
    )
    # a plugin whose import calls sys.exit(7)
    _write_distribution(
        site,
        "slmk-exits",
        "slmk_exits",
        "exits",
        """
        import sys
        sys.exit(7)
    """,
    )
    # a record named like a built-in's under another entry point name, a command named like a core
    # command, a command named like a built-in feature command, and a hook that calls sys.exit
    _write_distribution(
        site,
        "slmk-greedy",
        "slmk_greedy",
        "greedy",
        """
        import sys
        from slmk.api import Command, Installer, hookimpl

        def _load():
            import click

            @click.command()
            def convert():
                click.echo("hijacked")

            return convert

        @hookimpl
        def slmk_installers():
            yield Installer(name="foundry", description="an impostor", install=None, list=lambda c: [],
                            remove=None, locate=lambda c: c)

        @hookimpl
        def slmk_commands():
            yield Command("convert", "hijack convert", _load)
            yield Command("bench", "hijack bench", _load)

        @hookimpl
        def slmk_probes():
            sys.exit(3)
    """,
    )
    return site


def _listed_plugins(run_slmk, env: dict) -> dict[str, dict]:
    """`slmk plugins --json` (which must succeed), by plugin name."""
    result = run_slmk("plugins", "--json", env=env)
    assert result.returncode == 0, result.stderr
    return {p["name"]: p for p in json.loads(result.stdout)}


def test_collisions_and_exits_are_reported_and_the_built_ins_stay(run_slmk, hostile_site):
    env = {"PYTHONPATH": str(hostile_site)}
    plugins = _listed_plugins(run_slmk, env)
    # the built-in foundry entry point stays; the impostor is named with its distribution and not loaded
    assert plugins["foundry"]["distribution"] == "slmk" and plugins["foundry"]["loaded"]
    fake = plugins["foundry (slmk-fake-foundry)"]
    assert not fake["loaded"] and "already used by slmk" in fake["errors"][0]
    # sys.exit at import is contained
    assert not plugins["exits"]["loaded"] and "sys.exit(7)" in plugins["exits"]["errors"][0]
    greedy = " | ".join(plugins["greedy"]["errors"])
    assert "Installer 'foundry' not used: 'foundry' already defines it" in greedy
    assert "command 'convert' not added: a built-in command has that name" in greedy
    assert "Command 'bench' not used: 'measure' already defines it" in greedy
    assert "slmk_probes" in greedy and "sys.exit(3)" in greedy
    # every command still works: the real convert, the real bench, --help, doctor (reports, does not die)
    helped = run_slmk("--help", env=env)
    assert helped.returncode == 0 and "convert" in helped.stdout and "bench" in helped.stdout
    convert_help = run_slmk("convert", "--help", env=env)
    assert convert_help.returncode == 0 and "Convert a Hugging Face model folder" in convert_help.stdout
    bench_help = run_slmk("bench", "--help", env=env)
    assert bench_help.returncode == 0 and "Speed and memory" in bench_help.stdout
    doctor = run_slmk("doctor", "--json", env=env)
    checks = json.loads(doctor.stdout)["checks"]
    reported = " | ".join(c["detail"] for c in checks if c["probe"] == "plugins")
    assert "already used by slmk" in reported and "sys.exit(7)" in reported and "not added" in reported
    listed = run_slmk("list", "--json", "--cache-dir", str(hostile_site / "cache"), env=env)
    assert listed.returncode == 0 and json.loads(listed.stdout) == []  # the real foundry installer answered


# ------------------------------------------------------------------ issue 19, item 7: plugins that throw anything
@pytest.fixture
def unruly_site(tmp_path):
    """Plugins raising what `except Exception` does not catch, and a family returning the wrong type."""
    site = tmp_path / "unruly"
    site.mkdir()
    _write_distribution(site, "slmk-genexit", "slmk_genexit", "genexit", "raise GeneratorExit('at import')\n")
    _write_distribution(
        site,
        "slmk-escape",
        "slmk_escape",
        "escape",
        """
        class Escape(BaseException):
            pass

        raise Escape("straight out of the plugin")
    """,
    )
    _write_distribution(
        site,
        "slmk-wrongfamily",
        "slmk_wrongfamily",
        "wrongfamily",
        """
        from slmk.api import ModelFamily, hookimpl

        @hookimpl
        def slmk_model_families():
            yield ModelFamily(name="grabby", description="claims everything", match=lambda info: 10**6,
                              prompt_template=lambda info: {"system": "{Content}"})
    """,
    )
    return site


def test_base_exceptions_at_import_are_reported_by_name_and_skipped(run_slmk, unruly_site):
    env = {"PYTHONPATH": str(unruly_site)}
    plugins = _listed_plugins(run_slmk, env)
    assert not plugins["genexit"]["loaded"] and "GeneratorExit" in plugins["genexit"]["errors"][0]
    assert not plugins["escape"]["loaded"] and "Escape: straight out of the plugin" in plugins["escape"]["errors"][0]
    assert plugins["system"]["loaded"] and plugins["wrongfamily"]["loaded"]
    doctor = run_slmk("doctor", "--json", env=env)
    assert "Traceback" not in doctor.stderr, doctor.stderr
    reported = " | ".join(c["detail"] for c in json.loads(doctor.stdout)["checks"] if c["probe"] == "plugins")
    assert "GeneratorExit" in reported and "Escape" in reported


@pytest.mark.parametrize("command", ["template show", "inspect", "install"])
def test_a_family_returning_the_wrong_type_is_one_line_naming_its_plugin(
    run_slmk, unruly_site, tiny_model_dir, tmp_path, command
):
    env = {"PYTHONPATH": str(unruly_site)}
    args = [*command.split(), str(tiny_model_dir)]
    if command == "install":  # an HF folder is refused before templates: give it something that looks built
        build = tmp_path / "build"
        build.mkdir()
        for name in ("genai_config.json", "tokenizer_config.json", "chat_template.jinja", "config.json"):
            if (tiny_model_dir / name).exists():
                (build / name).write_bytes((tiny_model_dir / name).read_bytes())
        (build / "genai_config.json").write_text('{"model": {"type": "qwen2", "decoder": {}}}')
        args = ["install", str(build), "--name", "grab", "--cache-dir", str(tmp_path / "cache")]
    result = run_slmk(*args, env=env)
    if command == "inspect":  # a report: the template line names the plugin, the rest goes on
        assert result.returncode == 0, result.stderr
        assert "'grabby' of plugin 'wrongfamily'" in result.stdout and "returned dict" in result.stdout
        return
    lines = result.stderr.strip().splitlines()
    assert result.returncode not in (0, 3) and len(lines) == 1, result.stderr
    assert "'grabby' of plugin 'wrongfamily'" in lines[0] and "returned dict, not a PromptTemplate" in lines[0]


def test_an_interrupt_from_a_plugin_stops_slmk_naming_the_plugin(run_slmk, tmp_path):
    site = tmp_path / "interrupting"
    site.mkdir()
    _write_distribution(site, "slmk-ctrlc", "slmk_ctrlc", "ctrlc", "raise KeyboardInterrupt\n")
    result = run_slmk("plugins", env={"PYTHONPATH": str(site)})
    assert result.returncode == 130, result.stderr
    assert "interrupted in plugin 'ctrlc' (importing slmk_ctrlc)" in result.stderr and "Traceback" not in result.stderr


def test_a_probe_or_supports_that_raises_is_one_line_naming_its_plugin(run_slmk, tiny_model_dir, tiny_build, tmp_path):
    """Record callables run at a plugin boundary too: an execution provider's probe() and a
    converter's supports() that raise give one line naming the plugin, never an internal error."""
    site = tmp_path / "raising"
    site.mkdir()
    _write_distribution(
        site,
        "slmk-raising",
        "slmk_raising",
        "raising",
        """
        from slmk.api import Converter, ExecutionProvider, hookimpl

        def _boom(*args):
            raise RuntimeError("the probe fell over")

        @hookimpl
        def slmk_execution_providers():
            yield ExecutionProvider(name="flaky", description="raises",
                                    build_precisions=("int4",), run_precisions=("int4",), probe=_boom)

        @hookimpl
        def slmk_converters():
            yield Converter(name="shaky", description="raises", precisions=("int4",), execution_providers=("cpu",),
                            convert=_boom, supports=_boom, priority=100)
    """,
    )
    env = {"PYTHONPATH": str(site)}
    for args in (
        ["inspect", str(tiny_model_dir)],
        ["convert", str(tiny_model_dir), "-p", "int4", "-o", str(tmp_path / "out"), "--plan"],
        ["run", str(tiny_build("int4")), "--ep", "flaky", "--prompt", "hi"],
    ):
        result = run_slmk(*args, env=env)
        lines = result.stderr.strip().splitlines()
        assert result.returncode not in (0, 3) and "Traceback" not in result.stderr, (args, result.stderr)
        assert lines and "plugin 'raising'" in lines[-1], (args, result.stderr)
    assert not (tmp_path / "out").exists()
