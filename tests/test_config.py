"""slmk.toml: precedence, validation, writing."""

from __future__ import annotations

import pytest

from slmk.config import load_settings, write_config
from slmk.errors import ConfigError


def test_precedence_command_line_over_environment_over_file_over_default(tmp_path):
    path = tmp_path / "slmk.toml"
    path.write_text('precision = "int8"\nexecution_provider = "cuda"\n[generation]\ntemperature = 0.5\n')
    settings = load_settings({}, path, environ={})
    assert settings["precision"] == "int8" and settings.source("precision") == str(path)
    assert settings["quantization.block_size"] == 32 and settings.source("quantization.block_size") == "default"
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
    write_config(path, {"precision": "int8", "generation.temperature": 0.2, "name": None}, {"header": "made by a test"})
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
