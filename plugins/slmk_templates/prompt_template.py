"""Prompt templates: cut a model's Jinja chat template into the four pieces of a
Foundry Local ``PromptTemplate``, prove the pieces reproduce it, and resolve which pieces
a model gets (``--template FILE``, a family plugin, or the generic derivation). Rendering
is the bounded renderer's (``sandbox.py``). slmk_families derives with it, slmk_foundry
enforces the round trip, the kernel's ``install`` and ``inspect`` and slmk_measure's
``deploy`` resolve with it: all through ``slmk.api.templates``.

Two rules hold everywhere in this module (they are the contract the installer and the
``template`` command rely on):

* **A leading BOS goes into the system piece.** Most chat templates start with
  ``{{ bos_token }}``, and the runtime that reads a PromptTemplate does not add it:
  onnxruntime-genai 0.18's ``Tokenizer.encode`` adds no BOS for the tokenizer.json that
  slmk builds carry (measured, with ``add_bos_token`` true or not). Pieces repeat on every
  turn, except ``system``, which only ever comes first; so the BOS is written there.
  Conversations with a system message render exactly, BOS included; without one the
  legacy path sends no BOS, which the notes say (send a system message, an empty one
  will do). The round-trip check compares full strings and allows exactly that one gap:
  a missing leading BOS in a conversation without a system message.

* **What a PromptTemplate cannot say is said in notes, never hidden.** Four pieces
  concatenated cannot express (1) a default system message the template injects when the
  conversation has none (Qwen2.5, SmolLM2, Llama 3.1's always-present system block):
  the pieces are cut so that conversations *with* a system message round-trip, and the
  check proves that the no-system rendering equals the pieces given the default system
  message explicitly; (2) a system message folded into a user turn (Gemma 3, Mistral
  v0.3) or refused (Gemma 2, Mistral v0.1): the system piece then sends the system text
  as a user turn of its own, and the with-system conversation is skipped by the check.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmk.api import PromptTemplate, SlmkError, UsageError
from slmk.api.templates import ChatTemplateError, ResolvedTemplate, TemplateError, TemplateMismatch

from .sandbox import UNUSABLE_TEMPLATE_ERRORS, as_special_tokens, render_chat_template, special_tokens_for

if TYPE_CHECKING:
    from slmk.api import ModelInfo
    from slmk.api.operations import Registry

CONTENT = "{Content}"
PIECES = ("system", "user", "assistant", "prompt")

# Marker texts for cutting a rendering into pieces: letters and digits only, so no
# template's trim/escape/capitalisation touches them, and unique enough not to occur.
_SYS, _U1, _A1, _U2 = "SLMKsys7Qx", "SLMKusr1Qx", "SLMKast1Qx", "SLMKusr2Qx"

# The conversations check_round_trip renders: plain text, no surrounding whitespace
# (several templates trim message text; see the trim note).
_SYSTEM_TEXT = "You are a concise assistant."
_CHECKS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("one-turn", (("user", "What is the capital of France?"),)),
    ("with-system", (("system", _SYSTEM_TEXT), ("user", "What is the capital of France?"))),
    ("two-turn", (("user", "What is the capital of France?"), ("assistant", "Paris."), ("user", "And of Italy?"))),
    (
        "system-two-turn",
        (
            ("system", _SYSTEM_TEXT),
            ("user", "What is the capital of France?"),
            ("assistant", "Paris."),
            ("user", "And of Italy?"),
        ),
    ),
)


# --------------------------------------------------------------------------- analysis
def _strip_bos(text: str, bos: str | None) -> str:
    return text[len(bos) :] if bos and text.startswith(bos) else text


def _split(text: str, markers: Sequence[str]) -> list[str] | None:
    """The texts around markers that each occur once, in order; None otherwise."""
    parts, rest = [], text
    for marker in markers:
        if text.count(marker) != 1 or marker not in rest:
            return None
        before, rest = rest.split(marker, 1)
        parts.append(before)
    parts.append(rest)
    return parts


def _common_prefix(*texts: str) -> str:
    shortest = min(texts, key=len)
    for index, char in enumerate(shortest):
        if any(text[index] != char for text in texts):
            return shortest[:index]
    return shortest


def _token_boundary(prefix: str) -> str:
    """A common prefix cut back so it does not end inside a bracketed marker: the
    common prefix of ``<|end|>\\n<|assistant|>`` and ``<|end|>\\n<|endoftext|>`` is
    ``<|end|>\\n<|``, and the turn really ends at ``<|end|>\\n``."""
    for opening, closing in (("<", ">"), ("[", "]")):
        last_open = prefix.rfind(opening)
        if last_open > prefix.rfind(closing):
            prefix = prefix[:last_open]
    return prefix


def _writes_bos_first(chat_template: str, tokens: Mapping[str, str]) -> bool:
    """Whether the rendering starts with the ``bos_token`` variable, not just the same
    text (SmolLM2's BOS is ``<|im_start|>``, which its ChatML turns start with anyway)."""
    probe = {**tokens, "bos_token": "SLMKbos0Qx"}
    try:
        return render_chat_template(chat_template, _msgs(("user", _U1)), special_tokens=probe).startswith("SLMKbos0Qx")
    except ChatTemplateError:
        return False


def _common_suffix(a: str, b: str) -> str:
    length = 0
    while length < min(len(a), len(b)) and a[-1 - length] == b[-1 - length]:
        length += 1
    return a[len(a) - length :]


def _msgs(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in pairs]


@dataclass(frozen=True)
class TemplateAnalysis:
    """What a chat template does, as far as four pieces can say it.

    ``system_support``: ``native`` (a system piece round-trips), ``default`` (native, and
    the template injects ``default_system`` when the conversation has none), ``folded``
    (merged into a user turn), ``raises`` (the template refuses a system message) or
    ``ignored`` (dropped). ``template`` is None when the template cannot be cut into
    pieces; ``problem`` then says why.
    """

    template: PromptTemplate | None
    system_support: str
    default_system: str | None = None
    leading_bos: str | None = None
    notes: tuple[str, ...] = ()
    problem: str | None = None

    @property
    def system_round_trips(self) -> bool:
        """Whether conversations with a system message round-trip through the pieces."""
        return self.system_support in ("native", "default")


def analyse_chat_template(
    chat_template: str,
    special_tokens: Mapping[str, Any] | Iterable[str] | None = None,
    *,
    source: str = "chat_template",
) -> TemplateAnalysis:
    """Cut a chat template into PromptTemplate pieces by rendering marker conversations.

    Renders [user], [system, user] and [user, assistant, user] with unique marker
    texts and reads each piece off the text around the markers. Raises
    ``ChatTemplateError`` only when the template cannot render a single user message.
    """
    tokens = as_special_tokens(special_tokens)
    bos = tokens.get("bos_token")
    notes: list[str] = []

    def render(*pairs: tuple[str, str], gen: bool = True) -> str:
        return render_chat_template(chat_template, _msgs(*pairs), add_generation_prompt=gen, special_tokens=tokens)

    one_turn = render(("user", _U1))
    leading_bos = bos if bos and one_turn.startswith(bos) and _writes_bos_first(chat_template, tokens) else None
    if leading_bos:
        notes.append(
            f"the chat template starts with the BOS token {leading_bos!r}: the prompt template writes it "
            "at the start of the system piece, so a conversation without a system message gets no BOS "
            "(onnxruntime-genai's tokenizer adds none); send a system message, an empty one will do"
        )

    def body(text: str) -> str:
        return _strip_bos(text, leading_bos)

    def unusable(problem: str, support: str = "native") -> TemplateAnalysis:
        return TemplateAnalysis(None, support, leading_bos=leading_bos, notes=tuple(notes), problem=problem)

    split = _split(body(one_turn), [_U1])
    if split is None:
        return unusable("the chat template does not write a user message verbatim exactly once")
    pre_user, post_user = split
    try:
        split_nogen = _split(body(render(("user", _U1), gen=False)), [_U1])
    except ChatTemplateError:
        split_nogen = None
    post_user_nogen = split_nogen[1] if split_nogen else post_user

    try:
        two_turn = _split(body(render(("user", _U1), ("assistant", _A1), ("user", _U2))), [_U1, _A1, _U2])
    except ChatTemplateError as exc:
        return unusable(f"the chat template refuses a user, assistant, user conversation ({exc.message})")
    if two_turn is None:
        return unusable("the chat template does not write the messages of a two-turn conversation verbatim")
    g_start, g_user_assistant, g_assistant_user, g_end = two_turn
    if g_start != pre_user or g_end != post_user:
        return unusable(
            "the chat template frames the first or last user message differently once the "
            "conversation has an earlier turn"
        )
    # The text between a user message and the assistant's: the end of the user turn (what
    # the template writes after the last user message with and without a generation
    # prompt) and the assistant header.
    user_suffix = _token_boundary(_common_prefix(post_user, post_user_nogen, g_user_assistant))
    assistant_prefix = g_user_assistant[len(user_suffix) :]

    # The system message: supported in a piece of its own, injected by default, folded
    # into a user turn, refused, or dropped.
    default_system = None
    system_prefix = system_suffix = ""
    user_prefix = pre_user
    try:
        with_system = render(("system", _SYS), ("user", _U1))
    except ChatTemplateError:
        support = "raises"
    else:
        parts = _split(body(with_system), [_SYS, _U1])
        if parts is None:
            support = "ignored" if _SYS not in with_system else "folded"
        else:
            head, between, tail = parts
            if tail != post_user:
                support = "folded"
            elif between.endswith(pre_user):
                support = "native"
                system_prefix, system_suffix = head, between[: len(between) - len(pre_user)]
            elif pre_user.startswith(head) and pre_user.endswith(between) and len(pre_user) >= len(head) + len(between):
                # The no-system rendering holds a whole system block around a default text.
                support = "default"
                default_system = pre_user[len(head) : len(pre_user) - len(between)]
                system_prefix = head
                # Where the system block ends and the user header starts: the end-of-turn
                # text the user turn ends with, when the system turn ends with it too.
                if user_suffix and between.startswith(user_suffix):
                    user_prefix = between[len(user_suffix) :]
                else:
                    user_prefix = _common_suffix(between, g_assistant_user)
                system_suffix = between[: len(between) - len(user_prefix)]
                if body(render(("system", default_system), ("user", _U1))) != body(one_turn):
                    return unusable(
                        "the chat template adds a default system message that differs from an "
                        "explicit system message with the same text",
                        support,
                    )
            else:
                support = "folded"
    if not g_assistant_user.endswith(user_prefix):
        return unusable("the chat template frames later user messages differently from the first one", support)
    assistant_suffix = g_assistant_user[: len(g_assistant_user) - len(user_prefix)]

    user_piece = user_prefix + CONTENT + user_suffix
    if support in ("native", "default"):
        system_piece = system_prefix + CONTENT + system_suffix
    else:
        system_piece = user_piece
        notes.append(_SYSTEM_NOTES[support])
    system_piece = (leading_bos or "") + system_piece
    if default_system:
        notes.append(
            f"the chat template adds a default system message when the conversation has none "
            f"({default_system!r}); the prompt template renders a system message only when the "
            "client sends one, so send it to get the template's exact prompt"
        )
    elif default_system is not None:
        notes.append(
            "the chat template always writes a system block (empty without a system message); the "
            "prompt template writes it only when the client sends a system message (an empty one will do)"
        )
    notes.extend(_content_notes(chat_template, tokens))
    if "strftime_now" in chat_template:
        notes.append(
            "the chat template writes today's date (strftime_now); the prompt template holds the date it was derived on"
        )
    template = PromptTemplate(
        system=system_piece,
        user=user_piece,
        assistant=assistant_prefix + CONTENT + assistant_suffix,
        prompt=user_prefix + CONTENT + post_user,
        source=source,
    )
    return TemplateAnalysis(template, support, default_system, leading_bos, tuple(notes))


_SYSTEM_NOTES = {
    "folded": "the chat template folds the system message into a user turn, which four pieces cannot express; "
    "the prompt template sends the system text as a user turn of its own",
    "raises": "the chat template refuses system messages; the prompt template sends the system text as a user "
    "turn of its own",
    "ignored": "the chat template drops system messages; the prompt template sends the system text as a user "
    "turn of its own",
}


def _content_notes(chat_template: str, tokens: Mapping[str, str]) -> list[str]:
    """Ways the template rewrites message text that pieces (which insert it verbatim) do not."""
    notes = []
    padded = f"  {_U1}  "
    try:
        if padded not in render_chat_template(chat_template, _msgs(("user", padded)), special_tokens=tokens):
            notes.append(
                "the chat template trims whitespace around message text; the prompt template inserts "
                "text as given (send messages stripped)"
            )
    except ChatTemplateError:
        pass
    if "</think>" in chat_template:
        reasoning = f"<think>\nSLMKthought\n</think>\n\n{_A1}"
        try:
            rendered = render_chat_template(
                chat_template, _msgs(("user", _U1), ("assistant", reasoning), ("user", _U2)), special_tokens=tokens
            )
        except ChatTemplateError:
            rendered = ""
        if rendered and "SLMKthought" not in rendered:
            notes.append(
                "the chat template removes <think>...</think> reasoning from earlier assistant turns; the "
                "prompt template inserts assistant text as given (send earlier answers without reasoning)"
            )
    return notes


def derive_prompt_template(
    chat_template: str,
    special_tokens: Mapping[str, Any] | Iterable[str] | None = None,
    *,
    source: str = "chat_template",
) -> PromptTemplate:
    """The generic PromptTemplate of a chat template, proved by ``check_round_trip``.

    Raises ``TemplateError`` when the chat template cannot be cut into four pieces.
    """
    analysis = analyse_chat_template(chat_template, special_tokens, source=source)
    if analysis.template is None:
        raise TemplateError(
            f"cannot derive a prompt template from the chat template: {analysis.problem}",
            hint="pass --template FILE (JSON with system, user, assistant and prompt), "
            "or install a family plugin for this model",
        )
    check_round_trip(chat_template, analysis.template, special_tokens, analysis=analysis)
    return analysis.template


# --------------------------------------------------------------------------- round trip
@dataclass(frozen=True)
class RoundTripReport:
    """A passed round-trip check: what was compared, what was skipped and why."""

    checked: tuple[str, ...]
    skipped: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    ok: bool = True  # a failed check raises TemplateMismatch instead


def _first_difference(expected: str, got: str) -> int:
    for index, (a, b) in enumerate(zip(expected, got)):
        if a != b:
            return index
    return min(len(expected), len(got))


def check_round_trip(
    chat_template: str,
    template: PromptTemplate,
    special_tokens: Mapping[str, Any] | Iterable[str] | None = None,
    *,
    analysis: TemplateAnalysis | None = None,
) -> RoundTripReport:
    """Prove the pieces, filled in, render what the chat template renders.

    Conversations: one turn; with a system message; two turns (user, assistant, user);
    and a system message with two turns. Conversations with a system message are
    skipped (with a note) when the chat template folds, refuses or drops system
    messages. Strings are compared whole; the one difference allowed is a missing leading
    BOS in a conversation without a system message (the BOS lives in the system piece).
    Raises ``TemplateMismatch`` naming the conversation and the first differing characters.
    """
    tokens = as_special_tokens(special_tokens)
    if analysis is None:
        analysis = analyse_chat_template(chat_template, tokens)
    bos = analysis.leading_bos
    checked, skipped = [], []
    notes = list(analysis.notes)
    for name, pairs in _CHECKS:
        messages = _msgs(*pairs)
        has_system = messages[0]["role"] == "system"
        if has_system and not analysis.system_round_trips:
            skipped.append(name)
            continue
        expected = render_chat_template(chat_template, messages, special_tokens=tokens)
        sent = messages
        if not has_system and analysis.default_system is not None:
            sent = _msgs(("system", analysis.default_system)) + messages
        got = template.render(sent)
        # the one allowed gap, noted by the analysis: no BOS without a system message
        missing_bos_only = bool(bos) and sent[0]["role"] != "system" and expected == f"{bos}{got}"
        if got != expected and not missing_bos_only:
            raise _mismatch(name, messages, expected, got)
        checked.append(name)
    if skipped:
        notes.append(f"not checked: {', '.join(skipped)} (the chat template has no system turn of its own)")
    return RoundTripReport(tuple(checked), tuple(skipped), tuple(dict.fromkeys(notes)))


def _mismatch(name: str, messages: list[dict[str, str]], expected: str, got: str) -> TemplateMismatch:
    offset = _first_difference(expected, got)
    want, have = expected[offset : offset + 24], got[offset : offset + 24]
    before = expected[max(0, offset - 24) : offset]
    roles = ", ".join(m["role"] for m in messages)
    return TemplateMismatch(
        f"the prompt template does not reproduce the chat template for the {name} conversation ({roles}): "
        f"first difference at offset {offset}, after {before!r}: expected {want!r}, got {have!r}",
        hint="the pieces belong to another prompt format; `slmk template show MODEL` prints what slmk derives "
        "from the model's own chat template, or pass --template FILE",
        conversation=name,
        offset=offset,
        expected=want,
        got=have,
    )


# --------------------------------------------------------------------------- resolving
@lru_cache(maxsize=128)
def _sample(chat_template: str, tokens: tuple[tuple[str, str], ...]) -> str | None:
    specials = dict(tokens)
    for pairs in (
        (("system", _SYS), ("user", _U1), ("assistant", _A1), ("user", _U2)),
        (("user", _U1), ("assistant", _A1), ("user", _U2)),
        (("user", _U1),),
    ):
        try:
            return render_chat_template(chat_template, _msgs(*pairs), special_tokens=specials)
        except ChatTemplateError:
            continue
    return None


def sample_rendering(info: ModelInfo) -> str | None:
    """The model's chat template rendered for a sample conversation (with a system
    message when the template accepts one), or None without a usable template.

    Family plugins look for their turn markers here rather than in the template source,
    since templates often build markers at render time (``'<|' + role + '|>'``).
    """
    if not info.chat_template:
        return None
    return _sample(info.chat_template, tuple(sorted(special_tokens_for(info).items())))


def _read_template_file(path: Path) -> tuple[PromptTemplate | None, str | None]:
    """A JSON file with the four pieces, or a Jinja chat template."""
    if not path.is_file():
        raise UsageError(
            f"template file {path} not found",
            hint="pass a JSON file with system, user, assistant and prompt, or a .jinja chat template",
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"template file {path} is not UTF-8 text: {exc.reason} at byte {exc.start}", hint="save it as UTF-8"
        ) from None
    except OSError as exc:
        raise UsageError(f"cannot read template file {path}: {exc.strerror}", hint="pass a readable file") from None
    data = None
    if path.suffix.lower() == ".json" or text.lstrip().startswith('{"'):
        try:
            data = json.loads(text)
        except ValueError as exc:
            if path.suffix.lower() == ".json":
                raise UsageError(
                    f"template file {path} is not valid JSON: {exc}",
                    hint='write {"system": ..., "user": ..., "assistant": ..., "prompt": ...}',
                ) from None
    if data is None:
        return None, text
    if isinstance(data, dict) and isinstance(data.get("PromptTemplate"), dict):
        data = data["PromptTemplate"]  # an inference_model.json
    missing = [key for key in PIECES if not isinstance(data, dict) or not isinstance(data.get(key), str)]
    if missing:
        raise UsageError(
            f"template file {path} lacks {', '.join(missing)}",
            hint="the JSON holds the four strings system, user, assistant and prompt, each with {Content}",
        )
    for key in PIECES:
        if data[key].count(CONTENT) != 1:
            raise UsageError(
                f"template file {path}: {key!r} holds {{Content}} {data[key].count(CONTENT)} times",
                hint="each piece carries the message text exactly once, as {Content}",
            )
    return PromptTemplate(**{key: data[key] for key in PIECES}, source=f"file:{path}"), None


def resolve_template(registry: Registry, info: ModelInfo, template_file: Path | None = None) -> ResolvedTemplate:
    """The PromptTemplate for a model: ``--template FILE``, else the best family, else
    the generic derivation from the model's chat template.

    Notes say what the pieces cannot express and whether they round-trip against the
    chat template the runtimes will use (the installer enforces that check). A template
    error names the model folder.
    """
    try:
        return _resolve_template(registry, info, template_file)
    except TemplateError as exc:
        raise _naming_model(exc, info.path) from exc.__cause__


def _naming_model(exc: TemplateError, path: Path) -> TemplateError:
    """The same error, its message starting with the model folder it is about."""
    if not exc.message.startswith(f"{path}: "):
        exc.message = f"{path}: {exc.message}"
        exc.args = (exc.message,)
    return exc


def _resolve_template(registry: Registry, info: ModelInfo, template_file: Path | None) -> ResolvedTemplate:
    tokens = special_tokens_for(info)
    template = None
    if template_file is not None:
        path = Path(template_file).expanduser()
        template, jinja_text = _read_template_file(path)
        if jinja_text is not None:
            # the install replaces the model's chat template with this one: it decides the family too
            info = replace(info, chat_template=jinja_text)
            template = derive_prompt_template(jinja_text, tokens, source=f"file:{path}")
    family = registry.model_family(info)
    family_name = family.name if family else None
    chat_template = info.chat_template
    notes: list[str] = []
    if template is not None:
        source = template.source
    elif family is not None:
        template = registry.family_prompt_template(family, info)
        source = template.source or f"family:{family.name}"
    elif chat_template:
        template = derive_prompt_template(chat_template, tokens)
        source = "chat_template"
    else:
        model_type, _ = info.identity()
        raise SlmkError(
            f"no family plugin claims model_type {model_type or '(none)'!r} and the model has no chat template",
            hint="install a family plugin for it, pass --template FILE (JSON with system/user/assistant/prompt, "
            "or a .jinja chat template), or add chat_template to tokenizer_config.json",
        )
    if chat_template:
        try:
            report = check_round_trip(chat_template, template, tokens)
            notes.extend(report.notes)
        except TemplateMismatch as exc:
            notes.append(f"does not round-trip: {exc.message}")
        except UNUSABLE_TEMPLATE_ERRORS:
            # the runtimes render this template for every request: a family's or a file's pieces
            # do not make a template that does not parse, is unsafe or unbounded usable
            raise
        except TemplateError as exc:
            notes.append(f"round trip not checked: {exc.message}")
    else:
        notes.append(
            "the model has no chat template, so the prompt template is unchecked; Foundry Local v2 and "
            "onnxruntime-genai need one: add chat_template to tokenizer_config.json"
        )
    return ResolvedTemplate(template=template, family=family_name, source=source, notes=tuple(dict.fromkeys(notes)))
