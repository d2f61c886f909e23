"""slmk.toml: precedence, validation, writing."""

from __future__ import annotations

import pytest

from slmk.cli.build import write_config
from slmk.config import load_settings
from slmk.errors import ConfigError


def test_precedence_command_line_over_environment_over_file_over_default(tmp_path):
    path = tmp_path / "slmk.toml"
    path.write_text('precision = "int8"\nexecution_provider = "cuda"\n[generation]\ntemperature = 0.5\n')
    settings = load_settings({}, path, environ={})
    assert settings["precision"] == "int8" and settings.source("precision") == str(path)
    # unset by default: each converter's default for the precision applies (not in the build's options)
    assert settings["quantization.block_size"] is None and settings.source("quantization.block_size") == "default"
    assert "block_size" not in settings.quantization()
    settings = load_settings({}, path, environ={"SLMK_PRECISION": "fp32", "SLMK_GENERATION__TEMPERATURE": "0.9"})
    assert settings["precision"] == "fp32" and settings.source("precision") == "$SLMK_PRECISION"
    assert settings.generation() == {"temperature": 0.9}
    settings = load_settings({"precision": "int4"}, path, environ={"SLMK_PRECISION": "fp32"})
    assert settings["precision"] == "int4" and settings.source("precision") == "command line"
    assert settings["execution_provider"] == "cuda"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('precison = "int4"\n', "unknown key 'precison'.*did you mean precision"),
        ('precision = "int3"\n', "precision = 'int3'.*allowed: int4, int8, fp16, bf16, fp32"),
        ("[quantization]\nblock_size = 33\n", "quantization.block_size = 33.*allowed: 16, 32, 64, 128, 256"),
        ("[generation]\ntop_p = 1.5\n", r"generation.top_p = 1.5.*must be in \(0, 1\]"),
        ('[generation]\ntemperature = "hot"\n', "generation.temperature = 'hot'.*not a valid float"),
        ("precision = \n", "not valid TOML"),
    ],
)
def test_bad_file_values_name_the_key_and_what_is_allowed(tmp_path, text, needle):
    path = tmp_path / "slmk.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_settings({}, path, environ={})


def test_bad_environment_value_names_the_variable(tmp_path):
    with pytest.raises(ConfigError, match=r"from \$SLMK_QUANTIZATION__IS_SYMMETRIC"):
        load_settings({}, None, environ={"SLMK_QUANTIZATION__IS_SYMMETRIC": "maybe"})


def test_write_config_round_trips_and_is_atomic(tmp_path):
    path = tmp_path / "slmk.toml"
    write_config(path, {"precision": "int8", "generation.temperature": 0.2, "name": None}, "made by a test")
    assert path.read_text().startswith("# made by a test\n")
    settings = load_settings({}, path, environ={})
    assert settings["precision"] == "int8" and settings["generation.temperature"] == 0.2
    assert not list(tmp_path.glob(".*tmp"))
    with pytest.raises(ConfigError):
        write_config(path, {"precision": "int2"})
    assert load_settings({}, path, environ={})["precision"] == "int8", "a rejected write leaves the file as it was"


def test_missing_explicit_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings({}, tmp_path / "nope.toml", environ={})


# ------------------------------------------------------------------ issue 19, item 8: the environment
def _one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode not in (0, 3) and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in lines[0]
    return lines[0]


def test_slmk_config_that_is_not_a_file_says_what_it_is_without_reading_it(run_slmk, tmp_path):
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # nobody writes: opening it to read would block forever
    for target, kind in (("/dev/zero", "a character device"), (str(fifo), "a FIFO"), (str(tmp_path), "a folder")):
        line = _one_error_line(run_slmk("config", "show", env={"SLMK_CONFIG": target}, timeout=60))
        assert f"{target} ($SLMK_CONFIG) is {kind}, not a file" in line, line
    loop = tmp_path / "loop.toml"
    loop.symlink_to(loop)
    line = _one_error_line(run_slmk("config", "show", env={"SLMK_CONFIG": str(loop)}))
    assert "is unreadable (Too many levels of symbolic links)" in line and "not found" not in line
    missing = _one_error_line(run_slmk("config", "show", env={"SLMK_CONFIG": str(tmp_path / "nope.toml")}))
    assert "not found" in missing and "$SLMK_CONFIG" in missing
    flag = _one_error_line(run_slmk("--config", "/dev/zero", "config", "show"))
    assert "/dev/zero (--config) is a character device" in flag


def test_reading_a_config_file_is_bounded_and_never_blocks(tmp_path):
    import os
    import threading

    from slmk.config import CONFIG_MAX_BYTES, read_config_file

    huge = tmp_path / "huge.toml"
    huge.write_text("# " + "x" * CONFIG_MAX_BYTES + "\n")
    with pytest.raises(ConfigError, match="larger than 1 MiB"):
        read_config_file(huge)
    fifo = tmp_path / "swapped.toml"  # a path that became a FIFO after it was found
    os.mkfifo(fifo)
    errors = []

    def read() -> None:
        try:
            read_config_file(fifo)
        except ConfigError as exc:
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    reader.join(timeout=30)
    if reader.is_alive():  # unblock it before failing, so the suite does not hang
        with open(fifo, "w"):
            pass
        reader.join()
        pytest.fail("reading a FIFO blocked")
    assert "FIFO" in str(errors[0])


def test_unknown_plugin_names_in_the_plugin_variables_are_named(run_slmk, tiny_model_dir):
    line = _one_error_line(run_slmk("inspect", str(tiny_model_dir), env={"SLMK_LOAD_PLUGINS": "nonexistent,system"}))
    assert "SLMK_LOAD_PLUGINS names plugins that are not installed: nonexistent" in line
    assert "execution provider" not in line and "system" in line.split("installed plugins")[1]
    line = _one_error_line(run_slmk("plugins", env={"SLMK_DISABLE_PLUGINS": "famlies"}))
    assert "SLMK_DISABLE_PLUGINS names plugins that are not installed: famlies" in line
    assert run_slmk("plugins", env={"SLMK_LOAD_PLUGINS": "system,families"}).returncode == 0


@pytest.mark.parametrize("place", ["/", "home", "/usr", "/etc"])
def test_a_cache_folder_slmk_would_litter_is_refused(place, monkeypatch):
    """Checked through cache_root() itself, which writes nothing: the test litters no system folder
    even where the check is missing."""
    from pathlib import Path

    from slmk.errors import UsageError
    from slmk.fsutil import cache_root

    folder = str(Path.home()) if place == "home" else place
    monkeypatch.setenv("SLMK_CACHE_DIR", folder)
    with pytest.raises(
        UsageError, match=r"SLMK_CACHE_DIR .* (is the file-system root|is your home folder|already holds)"
    ):
        cache_root()


def test_convert_refuses_a_cache_folder_that_holds_other_things_and_writes_nothing(run_slmk, tiny_model_dir, tmp_path):
    import os

    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    result = run_slmk("convert", str(tiny_model_dir), "-o", str(tmp_path / "out"), env={"SLMK_CACHE_DIR": str(project)})
    line = _one_error_line(result)
    assert f"(SLMK_CACHE_DIR) {project} already holds other files and is not an slmk cache" in line
    assert sorted(os.listdir(project)) == ["src"] and not (tmp_path / "out").exists()


def test_a_new_empty_or_older_cache_folder_is_taken_and_tagged(tmp_path, monkeypatch):
    from slmk.fsutil import CACHE_TAG, cache_root

    for name, entries in (("new", None), ("empty", []), ("older", ["steps"]), ("tagged", [CACHE_TAG, "x"])):
        folder = tmp_path / name
        if entries is not None:
            folder.mkdir()
            for entry in entries:
                (folder / entry).mkdir() if entry != CACHE_TAG else (folder / entry).write_text("Signature: x\n")
        monkeypatch.setenv("SLMK_CACHE_DIR", str(folder))
        assert cache_root() == folder
        assert (folder / CACHE_TAG).is_file() == (entries is not None), name
    assert (tmp_path / "empty" / CACHE_TAG).read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")
