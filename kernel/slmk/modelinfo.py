"""What slmk knows about a model folder, read from JSON alone (no torch)."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError
from .records import FORMAT_HF, FORMAT_ORTGENAI

_DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64", "I8": "int8", "U8": "uint8"}


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object file as a dict: {} when the file is absent; a file that does not
    parse or holds something else than an object is a one-line UsageError naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{path} is not UTF-8 text: {exc.reason} at byte {exc.start}", hint="save it as UTF-8"
        ) from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a folder, not a file", hint=f"{path.name} must be a JSON file") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}", hint="check the file's permissions") from None
    except ValueError as exc:
        raise UsageError(f"{path} is not valid JSON: {exc}", hint="fix the line and column it names") from None
    if not isinstance(data, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(data), "a number")
        raise UsageError(f"{path} holds {kind}, not a JSON object", hint=f"{path.name} must be a JSON object {{...}}")
    return data


def _safetensors_header(path: Path) -> dict[str, Any]:
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > 100_000_000:
            raise ValueError("implausible safetensors header")
        return json.loads(handle.read(length))


def _count_parameters(folder: Path) -> tuple[int | None, str | None]:
    """Parameters and dominant dtype from the safetensors headers (fast, no weights read)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None, None
    total = 0
    by_dtype: dict[str, int] = {}
    for file in files:
        try:
            header = _safetensors_header(file)
            for name, tensor in header.items():
                if name == "__metadata__":
                    continue
                count = 1
                for dim in tensor["shape"]:
                    count *= int(dim)
                total += count
                by_dtype[tensor["dtype"]] = by_dtype.get(tensor["dtype"], 0) + count
        except (OSError, ValueError, TypeError, KeyError, AttributeError, struct.error):
            return None, None  # a damaged header: the size is unknown, the converter will say more
    dominant = max(by_dtype, key=by_dtype.get) if by_dtype else None
    return total, _DTYPE_NAMES.get(dominant, dominant)


def pickled_weights(folder: Path) -> list[str]:
    """The ``pytorch_model*.bin`` files a tool would unpickle to read ``folder``'s weights: those
    of a folder without safetensors (transformers prefers safetensors where both exist).

    Loading a pickle can run code: every converter and quantizer that reads such a folder
    asks for the user's consent first (``--allow-pickle``).
    """
    folder = Path(folder)
    if any(folder.glob("*.safetensors")):
        return []
    return sorted(p.name for p in folder.glob("pytorch_model*.bin"))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{path} is not UTF-8 text: {exc.reason} at byte {exc.start}", hint="save it as UTF-8"
        ) from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}", hint="check the file's permissions") from None


@dataclass(frozen=True)
class ModelInfo:
    """A model folder as slmk sees it: a Hugging Face folder or an ORT GenAI build."""

    path: Path
    format: str
    config: dict[str, Any]
    model_type: str
    architectures: tuple[str, ...]
    tokenizer_config: dict[str, Any] = field(default_factory=dict)
    generation_config: dict[str, Any] = field(default_factory=dict)
    chat_template: str | None = None
    num_parameters: int | None = None
    dtype: str | None = None
    genai_config: dict[str, Any] = field(default_factory=dict)
    build_info: dict[str, Any] = field(default_factory=dict)  # slmk_build.json of a build

    @property
    def architecture(self) -> str:
        """``architectures[0]`` of config.json, the name converters dispatch on ('' when none)."""
        return self.architectures[0] if self.architectures else ""

    @property
    def vocab_size(self) -> int | None:
        """The vocabulary size from config.json or genai_config.json."""
        return self.config.get("vocab_size") or self.genai_config.get("model", {}).get("vocab_size")

    @property
    def context_length(self) -> int | None:
        """The context in tokens from config.json or genai_config.json."""
        return self.config.get("max_position_embeddings") or self.genai_config.get("model", {}).get("context_length")

    def special_token(self, key: str) -> str | None:
        """bos_token / eos_token as a string (tokenizer_config stores str or AddedToken dicts)."""
        value = self.tokenizer_config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        return value if isinstance(value, str) else None

    def identity(self) -> tuple[str, tuple[str, ...]]:
        """``model_type`` and ``architectures`` of an HF folder, or of the model an slmk build came from."""
        # a build's genai_config names a runtime model type; slmk_build.json keeps config.json's
        model_type = self.build_info.get("model_type") or self.model_type or ""
        return model_type, tuple(self.architectures or self.build_info.get("architectures") or ())

    @classmethod
    def load(cls, path: str | Path) -> ModelInfo:
        """Read a model or build folder (JSON headers only); UsageError with the reason when it is not one."""
        folder = Path(path).expanduser()
        if not folder.exists():
            raise UsageError(f"model folder {folder} does not exist", hint="pass the folder that holds config.json")
        if not folder.is_dir():
            raise UsageError(f"{folder} is not a folder", hint="pass the model folder, not a file in it")
        genai_path, config_path = folder / "genai_config.json", folder / "config.json"
        genai_config = _read_json(genai_path)
        config = _read_json(config_path)
        if genai_path.is_file():
            if not isinstance(genai_config.get("model"), dict):
                raise UsageError(
                    f"{genai_path} has no model section",
                    hint="a build's genai_config.json describes its model (a model section); rebuild it",
                )
        elif not config_path.is_file():
            raise UsageError(
                f"{folder} has no config.json",
                hint="pass a Hugging Face model folder (config.json, weights, tokenizer files) or an slmk build",
            )
        fmt = FORMAT_ORTGENAI if genai_path.is_file() else FORMAT_HF
        tokenizer_config = _read_json(folder / "tokenizer_config.json")
        chat_template = tokenizer_config.get("chat_template")
        if isinstance(chat_template, list):  # named templates: [{"name": "default", "template": ...}]
            named = {t.get("name"): t.get("template") for t in chat_template if isinstance(t, dict)}
            chat_template = named.get("default") or next(iter(named.values()), None)
        if chat_template is not None and not isinstance(chat_template, str):
            raise UsageError(
                f"the chat template of {folder} is {type(chat_template).__name__}, not text",
                hint="chat_template in tokenizer_config.json holds a Jinja string",
            )
        jinja_file = folder / "chat_template.jinja"
        if jinja_file.is_file():  # transformers reads it before tokenizer_config.json's, and so do the runtimes
            chat_template = _read_text(jinja_file) or chat_template
        if not chat_template and (folder / "chat_template.json").is_file():
            chat_template = _read_json(folder / "chat_template.json").get("chat_template")
        if chat_template is not None and not isinstance(chat_template, str):
            raise UsageError(
                f"the chat template of {folder} is {type(chat_template).__name__}, not text",
                hint="chat_template in tokenizer_config.json holds a Jinja string",
            )
        for name, value in (("model_type", config.get("model_type")), ("architectures", config.get("architectures"))):
            expected = str if name == "model_type" else list
            if value is not None and not isinstance(value, expected):
                raise UsageError(
                    f"{config_path}: {name} is {type(value).__name__}, not {expected.__name__}",
                    hint="copy the model's own config.json",
                )
        model_type = config.get("model_type") or genai_config.get("model", {}).get("type", "")
        architectures = tuple(config.get("architectures") or ())
        num_parameters, dtype = _count_parameters(folder) if fmt == FORMAT_HF else (None, None)
        dtype = dtype or config.get("torch_dtype") or config.get("dtype")
        return cls(
            path=folder,
            format=fmt,
            config=config,
            model_type=model_type,
            architectures=architectures,
            tokenizer_config=tokenizer_config,
            generation_config=_read_json(folder / "generation_config.json"),
            chat_template=chat_template or None,
            num_parameters=num_parameters,
            dtype=dtype,
            genai_config=genai_config,
            build_info=_read_json(folder / "slmk_build.json"),
        )
