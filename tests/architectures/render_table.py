"""Render the support table of docs/architectures.md from a run of the architecture matrix.

SLMK_ARCH_REPORT=report.json .venv/bin/python -m pytest -q tests/test_architectures.py
.venv/bin/python tests/architectures/render_table.py report.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOKENIZER = {
    "phi-3-mini": "Phi-3-mini (real)",
    "mistral-v0.3": "Mistral v0.3 (real)",
    "gpt2": "GPT-2 BPE + the family's special tokens (stand-in)",
}


def _cell(value: str | None) -> str:
    if not value:
        return "not run"
    return value.replace("|", "\\|")


def _build(figures: dict, precision: str) -> str:
    value = figures.get(f"build_{precision}")
    if value is None:
        return "not run"
    return "yes" if value.startswith("ok") else "**no**: " + value.removeprefix("fails: ")


def _template(spec: dict, figures: dict) -> str:
    notes = figures.get("template_notes")
    if notes is None:
        return "not run"
    problems = [n for n in notes if n.startswith(("does not round-trip", "round trip not checked"))]
    if problems:
        return "noted: " + spec.get("template", {}).get("why", problems[0])
    skipped = [n for n in notes if n.startswith("not checked")]
    return "exact" + (f" ({skipped[0]})" if skipped else "")


def rows(report: dict) -> list[str]:
    out = [
        "| architecture | model it mirrors | fp32 / int8 / int4 build | fp32 = transformers (10 prompts) "
        "| chat prompt tokens = transformers: slmk runtime / onnxruntime-genai tokenizer | family, template "
        "| Foundry Local | int4 / fp32 size | int8 / fp32 size | tokenizer |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(HERE.glob("*.json")):
        spec = json.loads(path.read_text(encoding="utf-8"))
        figures = report.get(spec["name"], {})
        builds = " / ".join(_build(figures, p) for p in ("fp32", "int8", "int4"))
        tokens = f"{_cell(figures.get('prompt_tokens'))} / {_cell(figures.get('genai_prompt_tokens'))}"
        chat_template = spec["tokenizer"].get("chat_template") or f"{spec['tokenizer']['kit']} tokenizer_config"
        out.append(
            "| "
            + " | ".join(
                [
                    f"`{spec['config']['architectures'][0]}` ({spec['name']})",
                    f"`{spec['real_model']}`",
                    builds,
                    _cell(figures.get("parity")),
                    tokens,
                    f"{figures.get('family') or '-'}: {_cell(_template(spec, figures))}",
                    _cell(figures.get("foundry")),
                    _cell(str(figures["int4_ratio"])) if "int4_ratio" in figures else "not run",
                    _cell(str(figures["int8_ratio"])) if "int8_ratio" in figures else "not run",
                    f"{TOKENIZER[spec['tokenizer']['kit']]}; template `{chat_template}`",
                ]
            )
            + " |"
        )
    return out


if __name__ == "__main__":
    report = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    print("\n".join(rows(report)))
