"""Verify a build against its source: the Hugging Face model, run by the source runtime, is the truth.

``slmk convert`` runs the source on a few chat prompts (the model's own template) before it
builds, keeps only its greedy tokens and their logits, frees it, builds, then runs the build on
the same token ids (teacher-forced on the source's answer) and compares, position by position:

- fp32/fp16/bf16 builds must pick the source's greedy token at every position (a tie within
  ``TIE_MARGIN`` logits is not a difference); a build that differs is refused in one line
  naming the prompt and position, and the largest logit difference is recorded (as
  ``optimum-cli export onnx --atol`` validates an export);
- int8/int4 builds are measured: token agreement and logit cosine, recorded and shown.

The result goes into slmk_build.json (``verification``). Where the check cannot run (no
runtime for the source, too little memory, a precision that does not run here) the build
records ``not verified: <why>`` and the CLI says it in one line: never skipped silently.

Both halves are cached in the step cache: the source's tokens and logits by the source's
fingerprint (one source run serves every precision of a sweep), the verdict by the build's
final step key (a cached build keeps its verdict, refusals included).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmk.api import FORMAT_HF, ConvertRequest, ExecutionProvider, ModelInfo, Progress, SlmkError
from slmk.api.files import cache_root, fingerprint_tree, hash_json, temp_path, write_json_atomic

if TYPE_CHECKING:
    from slmk.api.operations import Registry

#: Chat prompts a build is checked with when the user gives none (an eval set replaces them).
DEFAULT_PROMPTS: tuple[tuple[Mapping[str, str], ...], ...] = (
    ({"role": "user", "content": "What is the capital of France?"},),
    ({"role": "user", "content": "Write one sentence about the sea."},),
    (
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Count from one to five."},
    ),
)
#: At most this many of the user's prompts are used.
MAX_PROMPTS = 4
#: Greedy tokens generated per prompt.
NEW_TOKENS = 8
#: Builds that must give the source's greedy tokens; the others are measured.
EXACT_PRECISIONS = ("fp32", "fp16", "bf16")
#: A position where the build picks another token is a tie, not a difference, when the
#: source's own logits for the two tokens are this close (fp32; half precisions get more).
TIE_MARGIN = {"fp32": 1e-3, "fp16": 5e-2, "bf16": 2e-1}
#: Memory the source run needs beyond its fp32 weights (activations, tokenizer, torch itself).
SOURCE_OVERHEAD_BYTES = 600 * 2**20
#: The format of cached verdicts and references: bump when what is compared changes.
VERIFY_FORMAT = 1

STATUS_VERIFIED = "verified"  # exact precisions: tokens equal to transformers'
STATUS_MEASURED = "measured"  # int8/int4: agreement and cosine recorded
STATUS_NOT_VERIFIED = "not verified"  # could not run here; reason says why


def memory_shortfall(info: ModelInfo) -> str | None:
    """Why the source does not fit in the memory available now (fp32 weights + overhead), or None."""
    import psutil

    params = info.num_parameters or 0
    needed = params * 4 + SOURCE_OVERHEAD_BYTES
    available = psutil.virtual_memory().available
    if needed > available:
        return (
            f"running the source in fp32 needs about {needed / 2**30:.1f} GiB and "
            f"{available / 2**30:.1f} GiB is available"
        )
    return None


def not_verified(reason: str) -> dict[str, Any]:
    """The verdict of a build that could not be checked, with why."""
    return {"status": STATUS_NOT_VERIFIED, "reason": reason}


@dataclass
class SourceAnswer:
    """The source's greedy answer to one prompt: prompt ids, answer ids, one logits row per answer id."""

    prompt: list[int]
    tokens: list[int]
    logits: Any  # numpy float32 [len(tokens), vocab]


@dataclass
class SourceReference:
    """What the source answered: one SourceAnswer per prompt, and what ran it."""

    against: str  # "transformers 5.x (torch 2.x, float32)"
    answers: list[SourceAnswer] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # each prompt's last message, for the refusal line
    rendered: list[str] = field(default_factory=list)  # each whole prompt as the chat template renders it
    seconds: float = 0.0


def _prompt_list(prompts: Sequence[Sequence[Mapping[str, str]]] | None) -> list[list[dict[str, str]]]:
    chosen = list(prompts or [])[:MAX_PROMPTS] or list(DEFAULT_PROMPTS)
    return [[dict(m) for m in messages] for messages in chosen]


def run_source(
    registry: Registry, folder: Path, prompts: Sequence[Sequence[Mapping[str, str]]], progress: Progress
) -> SourceReference:
    """Greedy answers and their logits from the source model, which is freed before returning."""
    import numpy as np

    from slmk.api.operations import open_source_session

    start = time.perf_counter()
    session = open_source_session(folder, registry=registry, options={"dtype": "float32"})
    try:
        versions = _versions()
        reference = SourceReference(
            against=f"transformers {versions['transformers']} (torch {versions['torch']}, "
            f"{getattr(session, 'dtype', 'float32')})"
        )
        context = int(getattr(session, "context_length", 0) or 0)
        for messages in progress.bar(prompts, label="source"):
            text = session.render_prompt(messages)
            ids = session.encode(text)
            if context and len(ids) + NEW_TOKENS > context:
                continue
            sequence, rows = list(ids), []
            for _ in range(NEW_TOKENS):
                row = session.logits(sequence, len(sequence) - 1)[-1]
                token = int(np.argmax(row))
                rows.append(np.asarray(row, dtype=np.float32))
                sequence.append(token)
                if token in session.eos_token_ids:
                    break
            reference.answers.append(SourceAnswer(ids, sequence[len(ids) :], np.stack(rows)))
            reference.texts.append(messages[-1]["content"])
            reference.rendered.append(text)
    finally:
        session.close()
    reference.seconds = time.perf_counter() - start
    return reference


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("transformers", "torch"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "?"
    return found


def compare_build(
    session: Any, reference: SourceReference, precision: str, *, decode=None
) -> tuple[dict[str, Any], str | None]:
    """(the verdict's figures, the first difference as a sentence or None) of a loaded build."""
    import numpy as np

    exact = precision in EXACT_PRECISIONS
    margin = TIE_MARGIN.get(precision, TIE_MARGIN["fp32"])
    positions = agree = ties = 0
    max_diff, cosines, first = 0.0, [], None
    prompt_ids_equal = 0
    for number, answer in enumerate(reference.answers):
        prompt_ids_equal += session.encode(reference.rendered[number]) == answer.prompt
        fed = answer.prompt + answer.tokens[:-1]
        built = np.asarray(session.logits(fed, len(answer.prompt) - 1), dtype=np.float32)
        source = answer.logits
        vocab = min(built.shape[-1], source.shape[-1])
        built, source = built[:, :vocab], source[:, :vocab]
        for position, wanted in enumerate(answer.tokens):
            row, want_row = built[position], source[position]
            positions += 1
            max_diff = max(max_diff, float(np.max(np.abs(row - want_row))))
            norms = float(np.linalg.norm(row) * np.linalg.norm(want_row))
            cosines.append(float(np.dot(row, want_row)) / norms if norms else 1.0)
            got = int(np.argmax(row))
            if got == wanted:
                agree += 1
                continue
            if want_row[wanted] - want_row[got] <= margin:
                ties += 1
                agree += 1
                continue
            if first is None:
                shown = (lambda ids: repr(decode(ids))) if decode else (lambda ids: "")
                first = (
                    f"prompt {number + 1} ({reference.texts[number][:40]!r}), generated token {position + 1}: "
                    f"transformers gives {wanted} {shown([wanted])}, the build {got} {shown([got])}"
                ).replace("  ", " ")
    figures = {
        "status": STATUS_VERIFIED if exact else STATUS_MEASURED,
        "against": reference.against,
        "prompts": len(reference.answers),
        "positions": positions,
        "tokens_equal": first is None,
        "token_agreement": round(agree / positions, 4) if positions else None,
        "ties": ties,
        "max_logit_diff": float(f"{max_diff:.3g}"),
        "logit_cosine": round(float(np.mean(cosines)), 6) if cosines else None,
        "min_logit_cosine": round(float(np.min(cosines)), 6) if cosines else None,
    }
    # what the build's own tokenizer makes of the prompts (the check above feeds transformers' ids)
    figures["prompt_tokens_equal"] = f"{prompt_ids_equal}/{len(reference.answers)}"
    return figures, first


def start(request: ConvertRequest, info: ModelInfo, registry: Registry) -> SourceCheck:
    """The ``BuildCheck`` record's ``start``: the check of one conversion."""
    return SourceCheck(
        registry,
        info,
        request.precision,
        registry.get("slmk_execution_providers", request.execution_provider),
        prompts=request.verify_prompts,
        cache=request.cache_dir or cache_root(),
        progress=request.progress,
    )


class SourceCheck:
    """What ``run_plan`` calls around a build: ``before(final_key)`` ahead of the first step (the
    source runs there, while nothing else is loaded), ``after(folder)`` on the finished but not yet
    renamed build; ``after`` returns the ``verification`` record or raises to refuse the build."""

    def __init__(
        self,
        registry: Registry,
        info: ModelInfo,
        precision: str,
        ep: ExecutionProvider,
        *,
        prompts: Sequence[Sequence[Mapping[str, str]]] | None = None,
        cache: Path,
        progress: Progress | None = None,
    ):
        self.registry = registry
        self.info = info
        self.precision = precision
        self.ep = ep
        self.prompts = _prompt_list(prompts)
        self.cache = Path(cache) / "verify"
        self.progress = progress or Progress(quiet=True)
        self.reference: SourceReference | None = None
        self.verdict: dict[str, Any] | None = None  # known before building: cached or not verified
        self.verdict_file: Path | None = None

    def _unavailable(self) -> str | None:
        if self.info.format != FORMAT_HF:
            return "the input is not a Hugging Face folder"
        from slmk.api.operations import source_unavailable

        reason = source_unavailable(self.info.path, self.registry)
        if reason:
            return reason
        if self.precision not in self.ep.run_precisions:
            return f"{self.precision} builds do not run on {self.ep.name}, so the build cannot be run here"
        usable = self.ep.probe()
        if not usable.usable:
            return f"{self.ep.name} is not usable here ({usable.reason})"
        if not self.info.chat_template:
            return "the model has no chat template to make prompts with"
        return memory_shortfall(self.info)

    def before(self, final_key: str) -> None:
        """Ahead of the first step: decide whether the check runs, and run the source (or find it cached)."""
        reason = self._unavailable()
        if reason:
            self.verdict = not_verified(reason)
            return
        source_key = hash_json(
            {
                "format": VERIFY_FORMAT,
                "source": fingerprint_tree(self.info.path.resolve()),
                "prompts": self.prompts,
                "new_tokens": NEW_TOKENS,
                "versions": _versions(),
            }
        )[:24]
        self.verdict_file = self.cache / f"{final_key}-{source_key}.json"
        cached = _read_json(self.verdict_file)
        if cached.get("format") == VERIFY_FORMAT and isinstance(cached.get("verification"), dict):
            self.verdict = {**cached["verification"], "cached": True}
            return
        reference_file = self.cache / f"source-{source_key}.npz"
        self.reference = _load_reference(reference_file)
        self.progress.total_steps = (self.progress.total_steps or 0) + 1 + (self.reference is None)
        if self.reference is None:
            with self.progress.step(f"run the source with transformers ({len(self.prompts)} prompts)"):
                try:
                    self.reference = run_source(self.registry, self.info.path, self.prompts, self.progress)
                except Exception as exc:  # the source not running is recorded, never the end of the build
                    self.verdict = not_verified(_one_line(exc))
                    return
            release_memory()
            if not self.reference.answers:
                self.verdict = not_verified("every prompt is longer than the model's context")
                self.reference = None
                return
            _save_reference(reference_file, self.reference)

    def after(self, folder: Path) -> dict[str, Any]:
        """On the finished build: the verdict to record; raises (nothing kept) when it differs from the source."""
        if self.verdict is not None:
            verdict = self.verdict
        else:
            verdict = self._check(folder)
            write_json_atomic(self.verdict_file, {"format": VERIFY_FORMAT, "verification": verdict})
        if verdict.get("status") == "refused":
            raise SlmkError(
                f"the {self.precision} build differs from the source model: {verdict['first_difference']}",
                hint="nothing was kept; the converter mistranslates this model: try another converter (--via) "
                "or report it; --no-verify keeps the build anyway (recorded in slmk_build.json)",
            )
        return verdict

    def _check(self, folder: Path) -> dict[str, Any]:
        from slmk.api.operations import open_session

        start = time.perf_counter()
        release_memory()  # what the converter freed, before the build is loaded beside it
        with self.progress.step("verify the build against the source"):
            try:
                session = open_session(folder, execution_provider=self.ep.name, registry=self.registry)
            except SlmkError as exc:
                return not_verified(f"the build does not load: {exc.message}")
            try:
                if not callable(getattr(session, "logits", None)):
                    return not_verified("the build's runtime gives no logits")
                figures, difference = compare_build(session, self.reference, self.precision, decode=session.decode)
            except Exception as exc:
                return not_verified(f"running the build failed: {_one_line(exc)}")
            finally:
                session.close()
        build_seconds = time.perf_counter() - start
        figures["seconds"] = round(self.reference.seconds + build_seconds, 3)
        figures["source_seconds"] = round(self.reference.seconds, 3)  # 0 when the source's answers were cached
        figures["build_seconds"] = round(build_seconds, 3)
        if difference:
            figures["first_difference"] = difference
            if self.precision in EXACT_PRECISIONS:
                figures["status"] = "refused"
        return figures


def release_memory() -> None:
    """Hand freed memory back to the system between the source run, the build and the check, so
    that each phase's peak does not stack on what the one before it freed (glibc keeps freed heap)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, SlmkError):
        return exc.message
    text = " ".join(str(exc).split())[:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _read_json(path: Path | None) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError, TypeError):
        return {}


def _save_reference(path: Path, reference: SourceReference) -> None:
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"against": reference.against, "texts": reference.texts, "rendered": reference.rendered}
    arrays = {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    for number, answer in enumerate(reference.answers):
        arrays[f"prompt{number}"] = np.asarray(answer.prompt, dtype=np.int64)
        arrays[f"tokens{number}"] = np.asarray(answer.tokens, dtype=np.int64)
        arrays[f"logits{number}"] = answer.logits
    tmp = temp_path(path)
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    tmp.replace(path)


def _load_reference(path: Path) -> SourceReference | None:
    if not path.is_file():
        return None
    import numpy as np

    try:
        with np.load(path) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            reference = SourceReference(meta["against"], texts=list(meta["texts"]), rendered=list(meta["rendered"]))
            for number in range(len(reference.texts)):
                reference.answers.append(
                    SourceAnswer(
                        [int(t) for t in data[f"prompt{number}"]],
                        [int(t) for t in data[f"tokens{number}"]],
                        np.array(data[f"logits{number}"]),
                    )
                )
    except (OSError, ValueError, KeyError):
        return None
    return reference
