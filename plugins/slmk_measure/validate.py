"""`slmk validate`: the validation checklist as checks that pass or fail with evidence.

Checks: domain answers, output format, edge cases (empty, whitespace only, non-ASCII
and emoji, a prompt longer than the context, the chat template's control tokens typed
by the user), consistent speed across prompt lengths, no memory growth over a long run
of generations, and many sessions opened and closed.

A check's status is ``pass``, ``fail``, ``warn`` (a risk worth knowing that the
deployment itself cannot fix; a failure with ``strict``) or ``skip`` (nothing to
check it with, said why).
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmk.api import ChatSession, Progress, SlmkError

from .bench import geometric_lengths
from .driver import SHORT_ANSWER_TOKENS, Driver, filler, user
from .evalset import EvalItem
from .quality import accuracy
from .resources import rss_bytes
from .stats import slope

DEFAULT_LEAK_RUNS = 200
DEFAULT_LEAK_KB_PER_RUN = 10.0
#: Fewer generations than this cannot tell warm-up growth from a leak.
MIN_LEAK_RUNS = 100
#: The leak check judges after each block of this many generations ...
LEAK_BLOCK = 20
#: ... and runs at most this many times --leak-runs while growth is still slowing down.
LEAK_MAX_FACTOR = 5
DEFAULT_SESSIONS = 20
DEFAULT_SESSION_GROWTH_MB = 32.0
DEFAULT_MIN_ACCURACY = 0.9
#: The eval accuracy a build may lose against its source model before validate warns.
SOURCE_ACCURACY_DROP = 0.05
DEFAULT_MAX_SLOWDOWN = 1.5
SPEED_LENGTHS = 4
SPEED_REPEATS = 3
SHORT_PROMPT = 32

NON_ASCII = "Grüße aus Zürich! ¿Qué tal? Привет, 你好, こんにちは, مرحبا 🚀🌍👍🏽"
WHITESPACE = " \n\t  \n"


@dataclass
class Check:
    id: str
    title: str
    status: str
    evidence: str
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "status": self.status, "evidence": self.evidence, "data": self.data}


def _short(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return json.dumps(text if len(text) <= limit else text[: limit - 3] + "...", ensure_ascii=False)


PROMPT_TOKENS_TITLE = "Prompt tokens equal to transformers"
#: Eval-set conversations the prompt-token check takes, besides TOKEN_CONVERSATIONS.
PROMPT_TOKEN_CONVERSATIONS = 5
TOKEN_CONVERSATIONS = [
    user("What is the capital of France?"),
    user("def add(a, b):\n    return a + b\n\nExplain this function."),
    user(NON_ASCII),
    [
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hi, how can I help?"},
        {"role": "user", "content": "Tell me a joke."},
    ],
]


def transformers_prompt_tokens(
    folder: Path, conversations: Sequence[Sequence[dict[str, str]]]
) -> list[list[int]] | str:
    """The prompt ids transformers gives each conversation (the folder's tokenizer and chat template),
    or why it cannot say."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return "transformers is not installed, so there is no reference to compare with: pip install transformers"
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        texts = [
            tokenizer.apply_chat_template(list(c), tokenize=False, add_generation_prompt=True) for c in conversations
        ]
    except Exception as exc:  # a folder transformers cannot read is a finding, not a crash
        return f"transformers cannot tokenize {folder.name}'s chat prompts: {type(exc).__name__}: {exc}"
    return [list(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]


def control_tokens(folder: Path) -> dict[str, int]:
    """The tokenizer's special tokens that the chat template writes ({text: id}).

    These are what a user could type to forge a turn boundary.
    """
    try:
        added = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8")).get("added_tokens", [])
    except (OSError, ValueError):
        return {}
    special = {t["content"]: int(t["id"]) for t in added if t.get("special") and isinstance(t.get("content"), str)}
    template = ""
    for name in ("chat_template.jinja", "tokenizer_config.json"):
        try:
            text = (folder / name).read_text(encoding="utf-8")
        except OSError:
            continue
        if name.endswith(".json"):
            try:
                value = json.loads(text).get("chat_template")
            except ValueError:
                value = None
            text = value if isinstance(value, str) else ""
        template += text
    in_template = {t: i for t, i in special.items() if t in template}
    return in_template or special


@dataclass(frozen=True)
class ValidationLimits:
    """What the checks measure and the thresholds they judge by (`slmk validate` options, a sweep's
    ``[validate]`` table)."""

    max_new_tokens: int = 64
    leak_runs: int = DEFAULT_LEAK_RUNS
    leak_kb_per_run: float = DEFAULT_LEAK_KB_PER_RUN
    sessions: int = DEFAULT_SESSIONS
    session_growth_mb: float = DEFAULT_SESSION_GROWTH_MB
    min_accuracy: float = DEFAULT_MIN_ACCURACY
    max_slowdown: float = DEFAULT_MAX_SLOWDOWN


@dataclass(frozen=True)
class ValidationRequest:
    """One validation: the build ``folder``, its eval set (``eval_note``: why there is none), the
    search options answers are generated with, the limits, and the Hugging Face folder the build was
    made from (``source_note``: why it is not run, when it is not). ``strict``: a warning fails too."""

    folder: Path
    items: Sequence[EvalItem] = ()
    eval_note: str = ""
    search: Mapping[str, Any] = field(default_factory=dict)
    limits: ValidationLimits = field(default_factory=ValidationLimits)
    source: Path | None = None
    source_note: str = ""
    strict: bool = False


class Validator:
    def __init__(
        self,
        open_session: Callable[[], ChatSession],
        request: ValidationRequest,
        progress: Progress | None = None,
    ):
        limits = request.limits
        self.open_session = open_session
        self.source = Path(request.source) if request.source else None  # the folder the build was made from
        self.source_note = request.source_note  # why the source is not run (when it is not)
        self.build_accuracy: float | None = None
        self.folder = Path(request.folder)
        self.items = list(request.items)
        self.eval_note = request.eval_note
        self.search = dict(request.search)
        self.max_new_tokens = limits.max_new_tokens
        self.leak_runs = limits.leak_runs
        self.leak_kb_per_run = limits.leak_kb_per_run
        self.sessions = limits.sessions
        self.session_growth_mb = limits.session_growth_mb
        self.min_accuracy = limits.min_accuracy
        self.max_slowdown = limits.max_slowdown
        self.progress = progress or Progress(quiet=True)
        self.checks: list[Check] = []
        answered = [i for i in self.items if i.has_answer]
        self.reference_prompt = list(answered[0].messages) if answered else user("Hello! Who are you?")
        self.baseline = ""

    # ------------------------------------------------------------ running
    def run(self) -> list[Check]:
        driver = Driver(self.open_session(), self.folder, self.search)
        try:
            self.baseline = self._reference_answer(driver)
            self._guard("domain", "Domain answers and output format", lambda: self.check_eval(driver))
            for case, title, text in (
                ("edge:empty", "Empty prompt", ""),
                ("edge:whitespace", "Whitespace-only prompt", WHITESPACE),
                ("edge:non-ascii", "Non-ASCII and emoji", NON_ASCII),
            ):
                self._guard(case, title, lambda c=case, t=title, x=text: self.check_edge(driver, c, t, x))
            self._guard("edge:overlong", "Prompt longer than the context", lambda: self.check_overlong(driver))
            self._guard(
                "edge:template-tokens", "Template tokens inside user text", lambda: self.check_template_tokens(driver)
            )
            self._guard("prompt-tokens", PROMPT_TOKENS_TITLE, lambda: self.check_prompt_tokens(driver))
            self._guard("performance", "Consistent speed across input lengths", lambda: self.check_speed(driver))
            self._guard("memory-leak", "No memory growth over a long run", lambda: self.check_leak(driver))
        finally:
            driver.session.close()
        self._guard("sessions", "Many sessions opened and closed", self.check_sessions)
        self._guard("source", "Against the source model", self.check_source)  # after the build is closed
        return self.checks

    def _add(self, check: Check) -> None:
        self.checks.append(check)
        self.progress.log(f"{check.status.upper():<4} {check.title}: {check.evidence}")

    def _guard(self, check_id: str, title: str, run: Callable[[], Any]) -> None:
        """A check that raises is a failed check with the error as evidence, never a crash."""
        try:
            run()
        except SlmkError as exc:
            self._add(Check(check_id, title, "fail", f"stopped with an error: {exc.one_line()}"))
        except Exception as exc:
            self._add(Check(check_id, title, "fail", f"crashed: {type(exc).__name__}: {exc}"))

    def _reference_answer(self, driver: Driver) -> str:
        return driver.ask(self.reference_prompt, max_new_tokens=SHORT_ANSWER_TOKENS)[0]

    def _still_works(self, driver: Driver) -> str | None:
        """Why the session no longer answers the reference question as it did at the start, or None."""
        try:
            again = self._reference_answer(driver)
        except Exception as exc:
            return f"the next question failed: {type(exc).__name__}: {exc}"
        if not again.strip():
            return "the same question then got no answer"
        if again != self.baseline and not self.search.get("do_sample"):  # sampled answers differ by design
            return (
                f"the same question was then answered differently: {_short(again)} instead of {_short(self.baseline)}"
            )
        return None

    # ------------------------------------------------------------ checks
    def check_source(self) -> None:
        """The build's recorded check against its source, and the eval accuracy of the source itself
        (transformers) beside the build's: what the user trained is the reference."""
        from slmk.api.operations import build_info, open_source_session, verification_summary

        recorded = build_info(self.folder).get("verification")
        evidence = f"build: {verification_summary(recorded)}"
        trusted = bool(recorded) and recorded.get("status") in ("verified", "measured")
        data: dict[str, Any] = {"verification": recorded, "source": str(self.source) if self.source else None}
        answered = [i for i in self.items if i.has_answer]
        if self.source is None:
            evidence += f"; {self.source_note or 'the source model is not run'}"
        elif not answered:
            evidence += "; no eval items with answers to compare the source's with"
        else:
            session = open_source_session(self.source)
            try:
                correct, count, _, _ = accuracy(
                    Driver(session, self.source, self.search), answered, self.max_new_tokens
                )
            finally:
                session.close()
            source_share = correct / count
            data.update({"source_accuracy": round(source_share, 4), "build_accuracy": self.build_accuracy})
            build_share = self.build_accuracy if self.build_accuracy is not None else float("nan")
            evidence += f"; eval accuracy {build_share:.2f} against the source's {source_share:.2f} (transformers)"
            trusted &= build_share >= source_share - SOURCE_ACCURACY_DROP
        self._add(Check("source", "Against the source model", "pass" if trusted else "warn", evidence, data))

    def check_eval(self, driver: Driver) -> None:
        if not self.items:
            note = self.eval_note or "no eval file: pass --eval FILE.jsonl"
            self._add(Check("domain", "Domain answers", "skip", note))
            self._add(Check("format", "Output format", "skip", note))
            return
        correct, answered, wrong, answers = accuracy(driver, self.items, self.max_new_tokens, self.progress)
        if answered:
            share = correct / answered
            self.build_accuracy = share
            status = "pass" if share >= self.min_accuracy else "fail"
            evidence = f"{correct}/{answered} correct ({share:.2f}, threshold {self.min_accuracy:.2f})"
            if wrong:
                first = wrong[0]
                evidence += (
                    f"; e.g. line {first['line']}: {_short(first['question'], 60)} wanted {first['wanted']}, "
                    f"got {_short(first['answer'])}"
                )
            self._add(
                Check(
                    "domain",
                    "Domain answers",
                    status,
                    evidence,
                    {
                        "correct": correct,
                        "items": answered,
                        "accuracy": round(share, 4),
                        "threshold": self.min_accuracy,
                        "wrong": wrong[:20],
                    },
                )
            )
        else:
            self._add(Check("domain", "Domain answers", "skip", "no eval item names an answer (expected/exact/regex)"))
        formatted = [(item, answer) for item, answer in zip(self.items, answers) if item.has_format]
        if not formatted:
            self._add(Check("format", "Output format", "skip", "no eval item sets format_regex or json_schema"))
            return
        broken = [
            {"line": item.line, "problem": item.format_problem(answer), "answer": answer}
            for item, answer in formatted
            if item.format_problem(answer)
        ]
        evidence = f"{len(formatted) - len(broken)}/{len(formatted)} answers in the required format"
        if broken:
            evidence += f"; e.g. line {broken[0]['line']}: {broken[0]['problem']} in {_short(broken[0]['answer'])}"
        self._add(
            Check(
                "format",
                "Output format",
                "fail" if broken else "pass",
                evidence,
                {"items": len(formatted), "broken": broken[:20]},
            )
        )

    def _attempt(self, driver: Driver, text: str) -> tuple[str, str, dict[str, Any]]:
        """(outcome, evidence, data) of one odd prompt: answered, refused (a clean SlmkError) or crashed."""
        try:
            answer, stats = driver.ask(user(text), max_new_tokens=SHORT_ANSWER_TOKENS)
        except SlmkError as exc:
            return "refused", f"refused cleanly: {exc.one_line()}", {"error": exc.one_line()}
        except Exception as exc:
            return "crashed", f"crashed: {type(exc).__name__}: {exc}", {"error": f"{type(exc).__name__}: {exc}"}
        tokens = stats.generated_tokens if stats else None
        data = {"answer": answer, "generated_tokens": tokens, "prompt_tokens": stats.prompt_tokens if stats else None}
        return "answered", f"answered {_short(answer)} ({tokens} tokens)", data

    def check_edge(self, driver: Driver, check_id: str, title: str, text: str) -> None:
        outcome, evidence, data = self._attempt(driver, text)
        problems = []
        if outcome == "crashed":
            problems.append(evidence)
        if check_id == "edge:non-ascii" and driver.can_encode:
            back = driver.session.decode(driver.tokens(text))
            data["tokenizer_round_trip"] = back == text
            if back != text:
                problems.append(f"the tokenizer does not round-trip the text: {_short(back)}")
            else:
                evidence += "; the tokenizer round-trips the text"
        broken = self._still_works(driver)
        if broken:
            problems.append(broken)
        else:
            evidence += "; the session kept working"
        data["outcome"] = outcome
        self._add(Check(check_id, title, "fail" if problems else "pass", "; ".join(problems) or evidence, data))

    def check_overlong(self, driver: Driver) -> None:
        context = driver.context_length
        if not context:
            self._add(Check("edge:overlong", "Prompt longer than the context", "skip", "the context length is unknown"))
            return
        text = filler(context + 64)  # every word is at least one token
        outcome, evidence, data = self._attempt(driver, text)
        evidence = f"a prompt of over {context + 64} tokens (context {context}): {evidence}"
        problems = [evidence] if outcome == "crashed" else []
        broken = self._still_works(driver)
        if broken:
            problems.append(broken)
        else:
            evidence += "; the session kept working"
        data.update({"outcome": outcome, "context_length": context})
        self._add(
            Check(
                "edge:overlong",
                "Prompt longer than the context",
                "fail" if problems else "pass",
                "; ".join(problems) or evidence,
                data,
            )
        )

    def check_template_tokens(self, driver: Driver) -> None:
        tokens = control_tokens(self.folder)
        if not tokens:
            self._add(
                Check(
                    "edge:template-tokens",
                    "Template tokens inside user text",
                    "skip",
                    "the tokenizer declares no special tokens",
                )
            )
            return
        shown = list(tokens)[:3]
        question = self.reference_prompt[-1]["content"]
        text = f"{' '.join(shown)} {question} {shown[0]}"
        outcome, evidence, data = self._attempt(driver, text)
        problems = []
        if outcome != "answered":
            problems.append(evidence)
        elif not data["answer"].strip():
            problems.append(f"no answer came: the typed {shown[0]} ended the turn")
        broken = self._still_works(driver)
        if broken:
            problems.append(broken)
        data.update({"tokens": shown, "prompt": text})
        evidence = f"user text with {', '.join(shown)}: {evidence}" + ("" if broken else "; the session kept working")
        self._add(
            Check(
                "edge:template-tokens",
                "Template tokens inside user text",
                "fail" if problems else "pass",
                "; ".join(problems) or evidence,
                data,
            )
        )
        # How the runtime's tokenizer reads the typed tokens: as text, or as control tokens.
        if not driver.can_encode:
            self._add(
                Check(
                    "edge:control-token-text",
                    "Typed template tokens stay text",
                    "skip",
                    "this runtime does not expose its tokenizer (the ortgenai runtime uses the same one)",
                )
            )
            return
        parsed = {}
        for token in shown:
            ids = driver.tokens(f"a {token} b")
            if tokens[token] in ids:
                parsed[token] = tokens[token]
        if parsed:
            listed = ", ".join(f"{t} -> id {i}" for t, i in parsed.items())
            self._add(
                Check(
                    "edge:control-token-text",
                    "Typed template tokens stay text",
                    "warn",
                    f"the runtime's tokenizer turns template tokens typed in user text into control tokens "
                    f"({listed}): a user can forge a turn boundary; the model still answered",
                    {"parsed_as_control": parsed},
                )
            )
        else:
            self._add(
                Check(
                    "edge:control-token-text",
                    "Typed template tokens stay text",
                    "pass",
                    f"{', '.join(shown)} in user text are tokenized as plain text",
                    {"parsed_as_control": {}},
                )
            )

    def check_prompt_tokens(self, driver: Driver) -> None:
        """The runtime's prompt tokens against transformers' (its tokenizer and the model's chat template)."""
        conversations = [list(i.messages) for i in self.items[:PROMPT_TOKEN_CONVERSATIONS]] or [self.reference_prompt]
        conversations += [c for c in TOKEN_CONVERSATIONS if c not in conversations]
        expected = transformers_prompt_tokens(self.folder, conversations)
        if isinstance(expected, str):
            self._add(Check("prompt-tokens", PROMPT_TOKENS_TITLE, "skip", expected))
            return
        if driver.can_encode:
            got = [driver.tokens(driver.session.render_prompt(c)) for c in conversations]
            same = sum(g == e for g, e in zip(got, expected, strict=True))
            what = "prompt tokens"
        else:  # the runtime tokenizes itself and reports only how many tokens it fed the model
            got = []
            for conversation in conversations:
                _, stats = driver.ask(conversation, max_new_tokens=1)
                got.append(stats.prompt_tokens if stats else None)
            same = sum(g == len(e) for g, e in zip(got, expected, strict=True))
            what = "prompt token counts (this runtime does not expose its token ids)"
        differs = [i for i, (g, e) in enumerate(zip(got, expected, strict=True)) if g not in (e, len(e))]
        evidence = f"{what} equal to transformers: {same}/{len(conversations)}"
        if differs:
            first = differs[0]
            evidence += (
                f"; conversation {first}: transformers {_short(str(expected[first]), 60)}, "
                f"runtime {_short(str(got[first]), 60)}"
            )
        data = {"equal": same, "conversations": len(conversations), "ids_compared": driver.can_encode}
        self._add(Check("prompt-tokens", PROMPT_TOKENS_TITLE, "warn" if differs else "pass", evidence, data))

    def check_speed(self, driver: Driver) -> None:
        """Decode time per token grows with the prompt (attention reads the whole KV cache): linearly.

        The trend of the shorter prompts predicts the longer ones; a prompt much slower
        than its prediction is a cliff (a slow kernel path, memory pressure), not context growth.
        """
        context = driver.context_length
        title = "Consistent speed across input lengths"
        if not context:
            self._add(Check("performance", title, "skip", "the context length is unknown"))
            return
        new_tokens = max(4, min(64, context // 4))
        targets = geometric_lengths(min(SHORT_PROMPT, context // 4), context - new_tokens - 1, SPEED_LENGTHS)
        prompts = [driver.content_of_length(target) for target in targets]
        driver.timed(prompts[0][0], 2, prompts[0][1])  # warm-up
        if not driver.forces_length:
            self._add(
                Check(
                    "performance",
                    title,
                    "skip",
                    "this runtime cannot hold off the end token (min_length), so answers at different prompt "
                    "lengths differ in length and their decode rates do not compare; check with --runtime ortgenai",
                )
            )
            return
        per_token: dict[int, list[float]] = {}

        def measure_round(label: str) -> None:
            # Lengths interleaved, so a burst of load elsewhere on the machine hits them all alike.
            work = [p for _ in range(SPEED_REPEATS) for p in prompts]
            for content, tokens in self.progress.bar(work, label=label):
                stats = driver.timed(content, new_tokens, tokens)
                if stats.decode_tokens_per_s:
                    per_token.setdefault(tokens, []).append(1 / stats.decode_tokens_per_s)

        measure_round("speed")
        if (self._worst_slowdown(per_token)[0] or 0) > self.max_slowdown:
            measure_round("speed (confirming)")  # a real cliff stays; a burst of load elsewhere does not
        _, lengths, times, predictions = self._worst_slowdown(per_token)
        if not predictions:
            self._add(Check("performance", title, "skip", "too few answers of more than one token to time decoding"))
            return
        worst = max(predictions, key=lambda p: p["slowdown"])
        status = "pass" if worst["slowdown"] <= self.max_slowdown else "fail"
        evidence = (
            f"decode {1 / times[0]:.1f} tokens/s at a {lengths[0]}-token prompt, {1 / times[-1]:.1f} at "
            f"{lengths[-1]} (ratio {times[0] / times[-1]:.2f}); against the linear trend of the shorter prompts "
            f"the worst length ({worst['prompt_tokens']} tokens) is {worst['slowdown']:.2f}x its predicted time "
            f"(threshold {self.max_slowdown:g}x)"
        )
        self._add(
            Check(
                "performance",
                title,
                status,
                evidence,
                {
                    "new_tokens": new_tokens,
                    "prompt_tokens": lengths,
                    "decode_tokens_per_s": [round(1 / t, 2) for t in times],
                    "long_over_short": round(times[0] / times[-1], 4),
                    "predictions": [
                        {k: round(v, 6) if isinstance(v, float) else v for k, v in p.items()} for p in predictions
                    ],
                    "worst_slowdown": round(worst["slowdown"], 4),
                    "threshold": self.max_slowdown,
                },
            )
        )

    @staticmethod
    def _worst_slowdown(per_token: dict[int, list[float]]):
        """(worst slowdown, lengths, per-token times, predictions): each length against the
        linear trend of the shorter ones. The fastest run of a length is its cost: load
        elsewhere on the machine only adds time."""
        lengths = sorted(per_token)
        if len(lengths) < 3:
            return None, lengths, [], []
        times = [min(per_token[n]) for n in lengths]
        predictions = []
        for index in range(2, len(lengths)):
            rise = max(0.0, slope(times[:index], lengths[:index]))
            base = sum(times[:index]) / index - rise * sum(lengths[:index]) / index
            predicted = max(base + rise * lengths[index], min(times[:index]))
            predictions.append(
                {
                    "prompt_tokens": lengths[index],
                    "predicted_s": predicted,
                    "measured_s": times[index],
                    "slowdown": times[index] / predicted,
                }
            )
        return max(p["slowdown"] for p in predictions), lengths, times, predictions

    def check_leak(self, driver: Driver) -> None:
        """RSS over many generations: a leak grows steadily; warming up (arenas, caches) levels off.

        The check runs at least ``leak_runs`` generations, in blocks. It passes when the
        RSS slope over some tail of at least half the runs is within the threshold. While
        growth is still slowing down (the slope of the last quarter under half that of
        the first), it keeps going, up to ``LEAK_MAX_FACTOR`` times ``leak_runs``. Fewer
        than ``MIN_LEAK_RUNS`` runs cannot tell warm-up from a leak: the check says so.
        """
        if self.leak_runs < MIN_LEAK_RUNS:
            self._add(
                Check(
                    "memory-leak",
                    "No memory growth over a long run",
                    "skip",
                    f"not enough runs to judge: {self.leak_runs} generations, at least {MIN_LEAK_RUNS} "
                    "are needed to tell warm-up from a leak (--leak-runs)",
                    {"runs": self.leak_runs},
                )
            )
            return
        prompts = [list(i.messages) for i in self.items if i.has_answer] or [self.reference_prompt]
        samples: list[int] = []
        limit = self.leak_runs * LEAK_MAX_FACTOR
        verdict = None
        bar = self.progress.bar(range(limit), total=limit, label="leak")
        for run in bar:
            driver.ask(prompts[run % len(prompts)], max_new_tokens=SHORT_ANSWER_TOKENS)
            samples.append(rss_bytes())
            if len(samples) >= self.leak_runs and len(samples) % LEAK_BLOCK == 0:
                verdict = judge_leak(samples, self.leak_kb_per_run * 1024, final=len(samples) >= limit)
                if verdict is not None:
                    break
        bar.close()
        status, warmup, per_run_kb = verdict or judge_leak(samples, self.leak_kb_per_run * 1024, final=True)
        evidence = (
            f"RSS {samples[0] / 2**20:.1f} -> {samples[-1] / 2**20:.1f} MB over {len(samples)} generations; "
            f"slope after {warmup} warm-up runs {per_run_kb:.2f} KB/generation (threshold {self.leak_kb_per_run:g} KB)"
        )
        self._add(
            Check(
                "memory-leak",
                "No memory growth over a long run",
                status,
                evidence,
                {
                    "runs": len(samples),
                    "warmup_runs": warmup,
                    "slope_kb_per_run": round(per_run_kb, 4),
                    "threshold_kb_per_run": self.leak_kb_per_run,
                    "rss_first_bytes": samples[0],
                    "rss_last_bytes": samples[-1],
                    "rss_mb": [round(s / 2**20, 2) for s in samples[:: max(1, len(samples) // 50)]],
                },
            )
        )

    def check_sessions(self) -> None:
        rss, differing = [], []
        for cycle in self.progress.bar(range(self.sessions), total=self.sessions, label="sessions"):
            session = self.open_session()
            try:
                answer = Driver(session, self.folder, self.search).ask(
                    self.reference_prompt, max_new_tokens=SHORT_ANSWER_TOKENS
                )[0]
            finally:
                session.close()
            del session
            gc.collect()
            if answer != self.baseline and not self.search.get("do_sample"):
                differing.append({"cycle": cycle, "answer": answer})
            rss.append(rss_bytes())
        # The first cycle may allocate what later ones reuse; growth is counted from after it.
        start = rss[1] if len(rss) > 2 else rss[0]
        growth_mb = (rss[-1] - start) / 2**20
        problems = []
        if growth_mb > self.session_growth_mb:
            problems.append(
                f"RSS grew {growth_mb:.1f} MB over {len(rss) - 1} cycles (threshold {self.session_growth_mb:g} MB)"
            )
        if differing:
            problems.append(
                f"{len(differing)} sessions answered the same question differently, e.g. "
                f"{_short(differing[0]['answer'])}"
            )
        evidence = (
            f"{self.sessions} open/generate/close cycles: RSS {start / 2**20:.1f} -> {rss[-1] / 2**20:.1f} MB "
            f"({growth_mb:+.1f} MB, threshold {self.session_growth_mb:g} MB); every session gave the same answer"
        )
        self._add(
            Check(
                "sessions",
                "Many sessions opened and closed",
                "fail" if problems else "pass",
                "; ".join(problems) or evidence,
                {
                    "cycles": self.sessions,
                    "growth_mb": round(growth_mb, 3),
                    "threshold_mb": self.session_growth_mb,
                    "rss_mb": [round(r / 2**20, 2) for r in rss],
                    "differing": differing[:5],
                },
            )
        )


def run_validate(
    open_session: Callable[[], ChatSession], request: ValidationRequest, progress: Progress | None = None
) -> dict[str, Any]:
    """Run every check; the report's ``ok`` is False when a check failed (or warned, with ``strict``)."""
    start = time.perf_counter()
    checks = Validator(open_session, request, progress).run()
    strict = request.strict
    failing = ("fail", "warn") if strict else ("fail",)
    counts = {status: sum(c.status == status for c in checks) for status in ("pass", "fail", "warn", "skip")}
    return {
        "ok": not any(c.status in failing for c in checks),
        "strict": strict,
        "counts": counts,
        "seconds": round(time.perf_counter() - start, 2),
        "checks": [c.as_dict() for c in checks],
    }


def render_markdown(report: dict[str, Any]) -> str:
    marks = {"pass": "PASS", "fail": "**FAIL**", "warn": "WARN", "skip": "skip"}
    lines = [
        f"# Validation of {report.get('target', '?')}",
        "",
        f"- folder: `{report.get('folder', '?')}`",
        f"- runtime: {report.get('runtime', '?')}, execution provider: {report.get('execution_provider', '?')}",
        f"- eval file: {report.get('eval_file') or 'none'}",
        f"- date: {report.get('date', '?')}",
        f"- result: **{'PASSED' if report['ok'] else 'FAILED'}** "
        f"({', '.join(f'{n} {s}' for s, n in report['counts'].items() if n)}; {report['seconds']} s)",
        "",
        "| status | check | evidence |",
        "|---|---|---|",
    ]
    for check in report["checks"]:
        evidence = check["evidence"].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {marks.get(check['status'], check['status'])} | {check['title']} | {evidence} |")
    wrong = next(
        (c["data"].get("wrong") for c in report["checks"] if c["id"] == "domain" and c["data"].get("wrong")), None
    )
    if wrong:
        lines += ["", "## Wrong domain answers", "", "| line | question | wanted | answer |", "|---|---|---|---|"]
        for item in wrong:
            cells = [str(item["line"]), item["question"], item["wanted"], item["answer"]]
            lines.append("| " + " | ".join(" ".join(c.split()).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def judge_leak(samples: Sequence[int], threshold_bytes: float, *, final: bool) -> tuple[str, int, float] | None:
    """(status, warm-up runs, KB per run), or None to keep measuring.

    Pass: the slope over some tail of at least half the samples is within the threshold
    (warm-up is the part before that tail). Not yet: growth is still slowing down (the
    last quarter's slope under half the first quarter's) and this is not the ``final``
    look. Fail: otherwise, the slope of the last half as evidence.
    """
    n = len(samples)
    for warmup in range(0, n // 2 + 1, LEAK_BLOCK // 2):
        tail_slope = slope(samples[warmup:])
        if tail_slope <= threshold_bytes:
            return "pass", warmup, tail_slope / 1024
    quarter = max(2, n // 4)
    first, last = slope(samples[:quarter]), slope(samples[-quarter:])
    if not final and last < 0.5 * first:
        return None
    return "fail", n // 2, slope(samples[n // 2 :]) / 1024
