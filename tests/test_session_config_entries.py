"""ONNX Runtime session config entries reach the session through genai_config.json.

onnxruntime-genai 0.18 passes every ``session_options`` key it does not know to ONNX
Runtime's AddConfigEntry, as a string. slmk writes such keys as strings; the proof that
they are used is an entry ONNX Runtime acts on at load (reading model.onnx as ORT format).
"""

from __future__ import annotations

import shutil

import pytest

from slmk.api.models import read_genai_config

pytestmark = pytest.mark.slow


def _load(build):
    import onnxruntime_genai as og

    og.Model(str(build))


def test_a_config_entry_is_written_as_a_string_and_onnx_runtime_uses_it(tiny_build, tmp_path):
    from slmk_ortgenai.session_options import write_session_options

    build = tmp_path / "build"
    shutil.copytree(tiny_build("int4"), build)
    written = write_session_options(build, {"session.intra_op.allow_spinning": 0})
    assert written["session.intra_op.allow_spinning"] == "0"
    assert read_genai_config(build)["model"]["decoder"]["session_options"]["session.intra_op.allow_spinning"] == "0"
    _load(build)  # a string value loads (a number is refused by onnxruntime-genai's parser)

    write_session_options(build, {"session.load_model_format": "ORT"})
    with pytest.raises(Exception, match=r"(?i)ort|flatbuffer|format"):
        _load(build)  # ONNX Runtime got the entry: it reads model.onnx as an ORT-format file
    write_session_options(build, {}, remove=("session.load_model_format",))
    _load(build)
