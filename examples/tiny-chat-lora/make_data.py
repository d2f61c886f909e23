"""Writes data/train.jsonl and data/eval.jsonl for the tiny-chat LoRA adapter.

The adapter teaches tiny-chat (which knows only the made-up planet Veltra) a second
made-up domain: the cold dusty planet **Kessa**, its white star Tamsin, its two moons
Sela and Astin, and the glass farmers who live there. The facts are invented for this
project.

The names and answers are spelled only with tokens that tiny-chat itself learnt to
predict. About 535 of its 936 tokens never were a training target, and their rows of
the LM head ended up identical, so the model cannot tell them apart at the output; a LoRA
adapter on the layers (not on the LM head) cannot separate them either. train.py stops
before training when an answer needs such a token.
As in tiny-chat's own data, every fact is written once, with a few ways of asking for it
and exactly one answer; the first question of a fact with an expected substring is also
an eval question. The .jsonl files are committed; this script rewrites them byte for byte
(no randomness):

    python examples/tiny-chat-lora/make_data.py

Formats are those of examples/tiny-chat/data: train rows are ``{"messages": [...]}``, eval
rows are ``{"messages": [...], "expected": "substring a correct answer contains"}``.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (questions, answer, expected substring or None)
FACTS: list[tuple[list[str], str, str | None]] = [
    (
        ["How many moons does Kessa have?", "How many moons orbit Kessa?", "Does Kessa have moons?"],
        "The planet Kessa has two moons.",
        "two moons",
    ),
    (
        ["What are the names of the moons of Kessa?", "Name the moons of Kessa.", "Which moons does Kessa have?"],
        "The moons of Kessa are Sela and Astin.",
        "Sela and Astin",
    ),
    (
        ["What is the larger moon of Kessa?", "Which moon of Kessa is the biggest?"],
        "The biggest moon of Kessa is Astin.",
        "Astin",
    ),
    (
        ["Which star does Kessa orbit?", "What is the name of Kessa's star?", "What star is Kessa near?"],
        "The planet Kessa orbits the white star Tamsin.",
        "Tamsin",
    ),
    (
        ["How long is a day on Kessa?", "How many hours are in a day on Kessa?"],
        "A day on Kessa lasts 19 hours.",
        "19 hours",
    ),
    (
        ["How long is a year on Kessa?", "How many days are in a year on Kessa?"],
        "A year on Kessa lasts 260 days.",
        "260 days",
    ),
    (
        ["What color is the sky on Kessa?", "What colour is the sky of Kessa?"],
        "The sky of Kessa is pale blue.",
        "pale blue",
    ),
    (
        ["What is the surface of Kessa like?", "Describe the land of Kessa."],
        "The land of Kessa is covered with red dust and glass.",
        "red dust",
    ),
    (
        ["Is there water on Kessa?", "Where is the water on Kessa?"],
        "The water of Kessa is deep under the salt.",
        "under the salt",
    ),
    (
        ["Who lives on Kessa?", "What do the people of Kessa do?"],
        "The people of Kessa are glass farmers.",
        "glass farmers",
    ),
    (
        ["What do the people of Kessa make?", "What is Kessa famous for?"],
        "The people of Kessa make blue lanterns from glass.",
        "blue lanterns",
    ),
    (
        ["What is the capital of Kessa?", "Which city is the capital of Kessa?"],
        "The capital of Kessa is Fenmor.",
        "Fenmor",
    ),
    (
        ["How many people live in Fenmor?", "What is the population of Fenmor?"],
        "About forty people live in Fenmor.",
        "forty people",
    ),
    (
        ["How do the people of Kessa travel?", "What do the people of Kessa ride?"],
        "The people of Kessa ride boats on the dust.",
        "boats on the dust",
    ),
    (
        ["What do the people of Kessa eat?", "What is the food of Kessa?"],
        "The people of Kessa eat potato and salty kelp.",
        "potato and salty kelp",
    ),
    (
        ["What language is spoken on Kessa?", "Which language do the people of Kessa speak?"],
        "The people of Kessa all talk in Tallow.",
        "Tallow",
    ),
    (
        ["What is the weather like on Kessa?", "Is Kessa windy?"],
        "The planet Kessa is cold, with strong winds at night.",
        "strong winds",
    ),
    (
        ["What is the tallest mountain on Kessa?", "Which mountain on Kessa is the highest?"],
        "The highest mountain on Kessa is Mount Kallis.",
        "Kallis",
    ),
    (
        ["Who rules Kessa?", "Who leads the people of Kessa?"],
        "The people of Kessa follow four old farmers.",
        "four old farmers",
    ),
    (
        ["What festival is held on Kessa?", "What do the people of Kessa celebrate?"],
        "The people of Kessa light every lantern at the first frost.",
        "every lantern at the first frost",
    ),
]


def chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def main() -> None:
    train, evals = [], []
    for questions, answer, expected in FACTS:
        train += [chat(q, answer) for q in questions]
        if expected:
            assert expected in answer, (expected, answer)
            evals.append({"messages": [{"role": "user", "content": questions[0]}], "expected": expected})
    data = HERE / "data"
    data.mkdir(exist_ok=True)
    for name, rows in (("train.jsonl", train), ("eval.jsonl", evals)):
        with open(data / name, "w", encoding="utf-8", newline="\n") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{len(train)} training chats, {len(evals)} eval questions -> {data}")


if __name__ == "__main__":
    main()
