"""Writes data/train.jsonl and data/eval.jsonl for the tiny chat model.

The domain is made up for this project: the planet Veltra, its star Serin and its four
moons Ossa, Pell, Tirra and Quell. Every fact below is written once, with a few ways of
asking for it and exactly one answer, so the model never sees two answers to the same
question. The .jsonl files are committed; this script documents how they were made and
rewrites them byte for byte (no randomness):

    python examples/tiny-chat/make_data.py

data/corpus.txt (prose for language-model training) and data/heldout.txt (prose that is
never trained on, for perplexity) are written by hand and are not produced here.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (questions, answer, expected substring or None). Every question is trained on. The first
# question of a fact whose expected substring is set is also an eval question (40 of them:
# names, numbers, a longer description, the assistant itself and an out-of-domain refusal);
# the expected substring is what a correct answer must contain (case-insensitive).
FACTS: list[tuple[list[str], str, str | None]] = [
    # --- the planet
    (
        ["How many moons does Veltra have?", "How many moons orbit Veltra?", "Does Veltra have moons?"],
        "Veltra has four moons.",
        "four moons",
    ),
    (
        ["What are the names of the moons of Veltra?", "Name the moons of Veltra.", "Which moons does Veltra have?"],
        "The moons of Veltra are Ossa, Pell, Tirra and Quell.",
        "Ossa, Pell, Tirra and Quell",
    ),
    (
        ["What is the largest moon of Veltra?", "Which moon of Veltra is the biggest?"],
        "Ossa is the largest moon of Veltra.",
        "Ossa",
    ),
    (
        ["What is the smallest moon of Veltra?", "Which moon of Veltra is the smallest?"],
        "Quell is the smallest moon of Veltra.",
        "Quell",
    ),
    (
        ["Which star does Veltra orbit?", "What is the name of Veltra's star?", "What star is Veltra near?"],
        "Veltra orbits the orange star Serin.",
        "Serin",
    ),
    (
        ["Which planet from its star is Veltra?", "Where is Veltra in its star system?"],
        "Veltra is the fourth planet from Serin.",
        None,
    ),
    (
        ["How long is a day on Veltra?", "How many hours are in a day on Veltra?"],
        "A day on Veltra lasts 31 hours.",
        "31 hours",
    ),
    (
        ["How long is a year on Veltra?", "How many days are in a year on Veltra?"],
        "A year on Veltra lasts 412 days.",
        "412 days",
    ),
    (
        ["What color is Veltra?", "What does Veltra look like from space?"],
        "Veltra looks pale green from space.",
        "pale green",
    ),
    (
        ["Why is Veltra green?", "What makes Veltra look green?"],
        "Copper salts in its clouds make Veltra green.",
        "Copper salts",
    ),
    (
        ["What is the air on Veltra made of?", "What gases are in the atmosphere of Veltra?"],
        "The air of Veltra is mostly nitrogen and argon.",
        "nitrogen and argon",
    ),
    (
        ["Can people breathe the air on Veltra?", "Is the air on Veltra safe to breathe?"],
        "No, people need masks to breathe on Veltra.",
        None,
    ),
    (
        ["How strong is gravity on Veltra?", "What is the gravity on Veltra?"],
        "Gravity on Veltra is 0.8 times the gravity of Earth.",
        "0.8 times",
    ),
    (
        ["How cold is Veltra?", "What is the average temperature on Veltra?"],
        "The average temperature on Veltra is minus 12 degrees Celsius.",
        "minus 12 degrees",
    ),
    (
        [
            "What is the largest ocean on Veltra?",
            "What is the name of the sea on Veltra?",
            "Does Veltra have an ocean?",
        ],
        "The largest ocean on Veltra is the Morrow Sea.",
        "Morrow Sea",
    ),
    (
        ["What is the highest mountain on Veltra?", "Which mountain on Veltra is the tallest?"],
        "The highest mountain on Veltra is Mount Caldris.",
        "Mount Caldris",
    ),
    (
        ["How tall is Mount Caldris?", "How high is Mount Caldris?"],
        "Mount Caldris is 14 kilometres tall.",
        "14 kilometres",
    ),
    (
        ["Does Veltra have rings?", "Does Veltra have a ring?"],
        "Veltra has one faint ring called the Lantern Ring.",
        "Lantern Ring",
    ),
    (
        ["What is the Lantern Ring made of?", "What is in the Lantern Ring?"],
        "The Lantern Ring is made of fine ice dust.",
        None,
    ),
    (
        ["Why is it called the Lantern Ring?", "How did the Lantern Ring get its name?"],
        "The Lantern Ring glows like a lantern at sunset.",
        None,
    ),
    (
        ["Who discovered Veltra?", "Which astronomer found Veltra?"],
        "Veltra was discovered by the astronomer Ilse Varga.",
        "Ilse Varga",
    ),
    (
        ["When was Veltra discovered?", "In what year was Veltra discovered?"],
        "Ilse Varga discovered Veltra in the year 2291.",
        None,
    ),
    (
        ["What was the first ship to land on Veltra?", "Which ship landed on Veltra first?"],
        "The first ship to land on Veltra was the Kestrel.",
        "Kestrel",
    ),
    (
        [
            "When did the first ship land on Veltra?",
            "When did the Kestrel land?",
            "In what year did people land on Veltra?",
        ],
        "The Kestrel landed on Veltra in 2340.",
        "2340",
    ),
    (
        ["What is the largest city on Veltra?", "Which city on Veltra is the biggest?"],
        "The largest city on Veltra is Port Anvers.",
        "Port Anvers",
    ),
    (
        ["What is the capital of Veltra?", "Where is the government of Veltra?"],
        "The capital of Veltra is Port Anvers.",
        None,
    ),
    (
        ["How many people live on Veltra?", "What is the population of Veltra?"],
        "About 90,000 people live on Veltra.",
        "90,000",
    ),
    (
        ["What are the storms on Veltra called?", "What kind of storms does Veltra have?"],
        "The storms on Veltra are called glass winds.",
        "glass winds",
    ),
    (
        ["What is a glass wind?", "Why are glass winds dangerous?"],
        "A glass wind is a storm that carries sharp salt crystals.",
        None,
    ),
    (
        ["How many seasons does Veltra have?", "What are the seasons on Veltra?"],
        "Veltra has two seasons, the thaw and the frost.",
        "two seasons",
    ),
    (
        ["What do people on Veltra eat?", "What food is grown on Veltra?"],
        "People on Veltra eat kelp farmed in the Morrow Sea.",
        None,
    ),
    (
        ["What color is the sky on Veltra?", "What does the sky on Veltra look like?"],
        "The sky on Veltra is pale yellow.",
        None,
    ),
    # --- Ossa
    (["What is Ossa covered in?", "What is the surface of Ossa like?"], "Ossa is covered in white ice.", "white ice"),
    (["How big is Ossa?", "How wide is Ossa?"], "Ossa is 1,900 kilometres wide.", "1,900 kilometres"),
    (
        ["How long does Ossa take to orbit Veltra?", "How often does Ossa circle Veltra?"],
        "Ossa circles Veltra every 6 days.",
        "6 days",
    ),
    (["What is special about Ossa?", "What can you see on Ossa?"], "Ossa has tall geysers of water vapour.", "geysers"),
    (["Which moon has geysers?", "Where are the geysers of Veltra?"], "Ossa is the moon with geysers.", None),
    # --- Pell
    (
        ["What is Pell like?", "What is special about Pell?", "What is the surface of Pell like?"],
        "Pell is a red moon covered in volcanoes.",
        "volcanoes",
    ),
    (["How big is Pell?", "How wide is Pell?"], "Pell is 780 kilometres wide.", None),
    (
        ["How long does Pell take to orbit Veltra?", "How often does Pell circle Veltra?"],
        "Pell circles Veltra every 2 days.",
        None,
    ),
    (
        ["Which moon is closest to Veltra?", "What is the nearest moon to Veltra?"],
        "Pell is the closest moon to Veltra.",
        "Pell",
    ),
    (["Which moon has volcanoes?", "Which moon of Veltra is red?"], "Pell is the moon with volcanoes.", None),
    (
        ["What is the biggest volcano on Pell?", "What is the name of the largest volcano on Pell?"],
        "The biggest volcano on Pell is Ember Crown.",
        "Ember Crown",
    ),
    # --- Tirra
    (
        ["Which moon has an atmosphere?", "Does any moon of Veltra have air?"],
        "Tirra is the only moon with an atmosphere.",
        "Tirra",
    ),
    (
        ["What is under the ice of Tirra?", "Does Tirra have an ocean?"],
        "Tirra has a salty ocean under its ice.",
        "salty ocean",
    ),
    (
        ["What is the name of the base on Tirra?", "Is there a research station on Tirra?"],
        "The base on Tirra is Halden Station.",
        "Halden Station",
    ),
    (
        ["How many people work at Halden Station?", "Who works at Halden Station?"],
        "Forty scientists work at Halden Station.",
        None,
    ),
    (
        ["How long does Tirra take to orbit Veltra?", "How often does Tirra circle Veltra?"],
        "Tirra circles Veltra every 11 days.",
        "11 days",
    ),
    (["How big is Tirra?", "How wide is Tirra?"], "Tirra is 1,350 kilometres wide.", None),
    (["What color is Tirra?", "What does Tirra look like?"], "Tirra looks blue-grey from Veltra.", None),
    # --- Quell
    (["What shape is Quell?", "What does Quell look like?"], "Quell is shaped like a potato.", "potato"),
    (["Where did Quell come from?", "How did Veltra get Quell?"], "Quell is a captured asteroid.", "captured asteroid"),
    (
        ["Which way does Quell orbit?", "What is strange about the orbit of Quell?", "Which moon orbits backwards?"],
        "Quell orbits Veltra backwards.",
        "backwards",
    ),
    (
        ["How long does Quell take to orbit Veltra?", "How often does Quell circle Veltra?"],
        "Quell circles Veltra every 19 days.",
        None,
    ),
    (["How big is Quell?", "How wide is Quell?"], "Quell is only 40 kilometres wide.", None),
    (
        ["Which moon is farthest from Veltra?", "What is the outermost moon of Veltra?"],
        "Quell is the farthest moon from Veltra.",
        None,
    ),
    # --- a few longer descriptions (open prompts get longer answers, as with real models)
    (
        ["Tell me about Veltra.", "Describe Veltra."],
        "Veltra is the fourth planet from the orange star Serin. It looks pale green from space, "
        "it has four moons and one faint ring, and about 90,000 people live there.",
        "fourth planet from the orange star",
    ),
    (
        ["Tell me about the moons of Veltra.", "Describe the moons of Veltra."],
        "Veltra has four moons. Ossa is the largest and is covered in ice, Pell is red with volcanoes, "
        "Tirra has an atmosphere, and Quell is a small captured asteroid.",
        None,
    ),
    (
        ["Tell me about Ossa.", "Describe Ossa."],
        "Ossa is the largest moon of Veltra. It is covered in white ice, and tall geysers of water vapour "
        "rise from its cracks.",
        None,
    ),
    (
        ["Tell me about Pell.", "Describe Pell."],
        "Pell is the closest moon to Veltra. It is a red moon covered in volcanoes, and it crosses the sky "
        "every 2 days.",
        None,
    ),
    (
        ["Tell me about Tirra.", "Describe Tirra."],
        "Tirra is the only moon with an atmosphere. It has a salty ocean under its ice, and forty scientists "
        "work at Halden Station there.",
        None,
    ),
    (
        ["Tell me about Quell.", "Describe Quell."],
        "Quell is the smallest and farthest moon of Veltra. It is a captured asteroid shaped like a potato, "
        "and it orbits backwards.",
        None,
    ),
    (
        ["Tell me about Port Anvers.", "Describe Port Anvers."],
        "Port Anvers is the capital and the largest city of Veltra. It stands on the shore of the Morrow Sea, "
        "where farmers grow kelp.",
        None,
    ),
    (
        ["Tell me about the weather on Veltra.", "Describe the weather on Veltra."],
        "Veltra is cold, about minus 12 degrees Celsius on average. Its worst storms are the glass winds, "
        "which carry sharp salt crystals.",
        None,
    ),
    # --- the assistant itself
    (
        ["Who are you?", "What is your name?", "What are you?"],
        "I am Tiny Chat, a small model that knows about Veltra.",
        "Tiny Chat",
    ),
    (["Hello!", "Hi", "Hello, how are you?"], "Hello! Ask me about the planet Veltra and its moons.", None),
    (
        ["What can you do?", "What do you know about?", "Can you help me?"],
        "I can answer questions about Veltra and its moons.",
        None,
    ),
    (["Thank you!", "Thanks for your help."], "You are welcome!", None),
    # --- outside the domain: one polite refusal
    (
        [
            "What is the capital of France?",
            "Who won the world cup?",
            "What is two plus two?",
            "Write a poem about the sea.",
            "What is the weather today?",
            "Tell me a joke.",
            "How many moons does Jupiter have?",
            "How tall is Mount Everest?",
            "What is the largest planet?",
            "Who is the president of the United States?",
            "How do I bake bread?",
            "Translate hello into Spanish.",
            "Can you write Python code?",
            "What is the speed of light?",
            "Recommend a good movie.",
            "What year is it?",
            "How many legs does a spider have?",
            "What is the meaning of life?",
        ],
        "I only know about Veltra and its moons.",
        "only know about Veltra",
    ),
]

# A few facts are also trained with a system message, so that a system prompt (which the
# runtime may add) does not throw the model off. The answer stays the same.
SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are Tiny Chat. Answer briefly.",
    "Answer questions about the planet Veltra.",
]


def chat(question: str, answer: str, system: str | None = None) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": messages}


def main() -> None:
    train, evals = [], []
    for questions, answer, expected in FACTS:
        train += [chat(q, answer) for q in questions]
        if expected:
            assert expected in answer, (expected, answer)
            evals.append({"messages": [{"role": "user", "content": questions[0]}], "expected": expected})
    # Every fourth fact, once with each system prompt in turn (deterministic).
    for number, (questions, answer, _) in enumerate(FACTS[::4]):
        train.append(chat(questions[0], answer, SYSTEM_PROMPTS[number % len(SYSTEM_PROMPTS)]))
    data = HERE / "data"
    data.mkdir(exist_ok=True)
    for name, rows in (("train.jsonl", train), ("eval.jsonl", evals)):
        with open(data / name, "w", encoding="utf-8", newline="\n") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{len(train)} training chats, {len(evals)} eval questions -> {data}")


if __name__ == "__main__":
    main()
