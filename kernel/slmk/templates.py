"""Prompt templates: render a model's Jinja chat template, cut it into the four pieces of
a Foundry Local ``PromptTemplate``, and prove the pieces reproduce it.

Three rules hold everywhere in this module (they are the contract the installer and
the ``template`` command rely on):

* **Rendering is transformers' rendering.** ``render_chat_template`` uses the same
  sandboxed Jinja environment, globals, filters and template variables as
  ``tokenizer.apply_chat_template(..., tokenize=False)``, so what slmk checks against is
  what Foundry Local v2 and onnxruntime-genai feed the model.

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

import functools
import json
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import SlmkError, UsageError, contain_plugin_failure
from .records import PromptTemplate

if TYPE_CHECKING:
    from .modelinfo import ModelInfo
    from .plugins import Registry
    from .records import ModelFamily

CONTENT = "{Content}"
PIECES = ("system", "user", "assistant", "prompt")

#: Names transformers passes to the template from ``tokenizer.special_tokens_map``.
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

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

# Tokens recognised by name when special tokens arrive as a plain list (the order
# within the list decides between several candidates).
_KNOWN_BOS = ("<|begin_of_text|>", "<s>", "<bos>", "<｜begin▁of▁sentence｜>", "<|startoftext|>")
_KNOWN_EOS = (
    "<|eot_id|>",
    "<|im_end|>",
    "<end_of_turn>",
    "</s>",
    "<eos>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "<｜end▁of▁sentence｜>",
    "<|end|>",
)


class TemplateError(SlmkError):
    """A chat template that cannot be rendered, or cannot be cut into a PromptTemplate."""


class ChatTemplateError(TemplateError):
    """The Jinja chat template failed: a syntax error, or it raised for this conversation."""


class ChatTemplateSyntaxError(ChatTemplateError):
    """The chat template does not parse: no conversation can render."""


class UnsafeTemplateError(ChatTemplateError):
    """The chat template reached for something the sandbox refuses (``__class__``, ...)."""


class RenderLimitError(ChatTemplateError):
    """The chat template went over a render budget: steps, sizes, seconds or memory."""


#: The errors that say the template itself is unusable, whatever the conversation: a model
#: whose own chat template ends in one of these cannot run, so no family or file hides it.
UNUSABLE_TEMPLATE_ERRORS = (ChatTemplateSyntaxError, UnsafeTemplateError, RenderLimitError)


class TemplateMismatch(TemplateError):
    """The PromptTemplate pieces do not reproduce what the chat template renders."""

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        conversation: str = "",
        offset: int = -1,
        expected: str = "",
        got: str = "",
    ):
        super().__init__(message, hint)
        self.conversation, self.offset, self.expected, self.got = conversation, offset, expected, got


# --------------------------------------------------------------------------- render limits
# A chat template is code that ships with the model folder: slmk renders it for `template
# show`, `inspect`, `install` and before a runtime loads a build. Two lines of defence bound
# one rendering, so a hostile or broken template ends in a one-line ChatTemplateError
# instead of hanging slmk or eating memory:
#
# 1. the metered sandbox below counts steps and checks sizes before allocating, which
#    gives a precise message for the usual ways to loop or to build a big value;
# 2. the rendering runs in a separate worker process (render_worker.py) with an
#    address-space limit, a wall-clock deadline the parent enforces by killing it, and a
#    CPU-time backstop: work no meter sees (C code comparing shared nested lists,
#    quadratic codecs) is bounded too, whatever the template does.
#
# Published templates stay far below them (a few hundred steps and a few KB per rendering).

#: Loop iterations, calls, filters and intercepted operators one rendering may take
#: (plus one per character of the conversation). Counting steps, not seconds, makes the
#: stop deterministic: the same template fails the same way on a fast or a busy machine.
RENDER_STEPS = 1_000_000
#: The largest string or list (in characters, items counted as characters) one operation
#: may make, plus 8 per character of the conversation.
RENDER_VALUE_CHARS = 1_000_000
#: Everything the operations and the output make together, in units of the largest value.
RENDER_TOTAL_FACTOR = 16
#: The CPU time one rendering may use: the metered sandbox checks it at every step, and the
#: render worker's CPU limit (RLIMIT_CPU) ends it for work in C, which checks nothing. CPU
#: time, not wall time, so a busy machine does not turn a slow rendering into a refusal.
RENDER_SECONDS = 4.0
#: The wall-clock backstop: the parent kills a rendering that has not answered by then (a
#: worker starved on a busy machine, or stopped).
RENDER_WALL_SECONDS = 6.0
#: Memory one rendering may take on top of what the idle render worker holds (its
#: address-space limit), plus RENDER_BYTES_PER_CHAR per character of the conversation.
RENDER_MEMORY_BYTES = 512 * 1024**2
RENDER_BYTES_PER_CHAR = 64
#: The widest JSON indent tojson takes: indents repeat once per nesting level and line.
TOJSON_MAX_INDENT = 64
#: Templates that exceeded a limit in this process fail at once on their next rendering:
#: the template analysis renders a template a dozen times and each would run to the limit.
_EXCEEDED: dict[str, str] = {}
_EXCEEDED_MAX = 64


_CPU_TIME_REASON = f"it used more than {RENDER_SECONDS:g} s of CPU time"


class RenderLimitExceeded(Exception):
    """Raised inside a rendering that went over a limit (a plain Exception, so no Jinja
    filter that catches ValueError or TypeError can swallow it)."""


class _RenderBudget:
    """What one rendering may still spend: steps, characters made, and time."""

    def __init__(self, conversation_chars: int = 0):
        self.step_limit = RENDER_STEPS + conversation_chars
        self.value_limit = RENDER_VALUE_CHARS + 8 * conversation_chars
        self.total_limit = self.value_limit * RENDER_TOTAL_FACTOR
        self.steps = self.step_limit
        self.total = self.total_limit
        self.deadline = time.process_time() + RENDER_SECONDS

    def step(self) -> None:
        self.steps -= 1
        if self.steps < 0:
            raise RenderLimitExceeded(f"it took more than {self.step_limit:,} steps (loop iterations and calls)")
        if time.process_time() > self.deadline:
            raise RenderLimitExceeded(_CPU_TIME_REASON)

    def check_size(self, size: int, what: str = "a value") -> None:
        if size > self.value_limit:
            raise RenderLimitExceeded(f"{what} of {size:,} characters (at most {self.value_limit:,})")

    def produce(self, size: int, what: str = "a value") -> None:
        self.check_size(size, what)
        self.total -= size
        if self.total < 0:
            raise RenderLimitExceeded(f"it made more than {self.total_limit:,} characters in all")


_BUDGET: ContextVar[_RenderBudget | None] = ContextVar("slmk_render_budget", default=None)


def _budget() -> _RenderBudget:
    # No rendering under way: Jinja folds constant filter calls while compiling. Give that
    # call a budget of its own, so a folded `'x'|center(10**9)` is refused too.
    return _BUDGET.get() or _RenderBudget()


#: An int over this many bits is refused (a number nobody prints, and squaring it is slow).
_MAX_INT_BITS = 1 << 16


def _weight(value: Any, limit: int) -> int:
    """About how many characters ``str(value)`` makes: strings by length, containers by
    their items (a list holding one long string 1000 times weighs 1000 strings). Stops
    counting past ``limit``, so weighing is cheap even for a huge container."""
    total, stack = 0, [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, (str, bytes)):
            total += len(item)
        elif isinstance(item, Mapping):
            total += 2
            for key, val in item.items():
                stack.append(key)
                stack.append(val)
                if len(stack) > limit:
                    return limit + 1
        elif isinstance(item, (list, tuple, set, frozenset)):
            total += 2 + 2 * len(item)
            stack.extend(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            total += item.bit_length() // 3 + 1
        else:
            total += 8
    return total


def _produce(budget: _RenderBudget, value: Any, what: str = "a value") -> Any:
    budget.produce(_weight(value, budget.value_limit), what)
    return value


def _check_int_bits(bits: int) -> None:
    if bits > _MAX_INT_BITS:
        raise RenderLimitExceeded(f"a number of about {bits:,} bits (at most {_MAX_INT_BITS:,})")


def _check_width(budget: _RenderBudget, width: Any, what: str) -> None:
    if isinstance(width, int) and not isinstance(width, bool):
        budget.check_size(abs(width), what)
    elif isinstance(width, str):
        budget.check_size(len(width), what)


_PRINTF_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?([a-zA-Z%])")


def _check_printf(budget: _RenderBudget, fmt: str, args: Any) -> None:
    """``'%1000000000s' % x`` allocates before any hook sees the result: check the widths."""
    star = False
    for width, precision, _ in _PRINTF_SPEC.findall(fmt):
        for number in (width, precision):
            if number == "*":
                star = True
            elif number:
                budget.check_size(int(number), "a %-format width")
    if star:
        for arg in args if isinstance(args, tuple) else (args,):
            _check_width(budget, arg, "a %-format width")


def _check_str_format(budget: _RenderBudget, fmt: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    """``'{:>1000000000}'.format(x)``: the widths in the replacement fields."""
    import string

    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # str.format raises the same error itself
    for _, _, spec, _ in fields:
        if not spec:
            continue
        for number in re.findall(r"\d+", spec):
            budget.check_size(int(number), "a format width")
        if "{" in spec:  # a nested width: {:{}} takes it from the arguments
            for arg in (*args, *kwargs.values()):
                _check_width(budget, arg, "a format width")


def _check_replace(budget: _RenderBudget, text: Any, old: Any, new: Any, count: Any = None) -> None:
    if not isinstance(text, (str, bytes)) or not isinstance(old, type(text)) or not isinstance(new, type(text)):
        return
    hits = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    budget.check_size(len(text) + hits * max(0, len(new) - len(old)), "replace() making a string")


def _check_join(budget: _RenderBudget, separator: Any, items: Sequence[Any]) -> None:
    size = sum(_weight(item, budget.value_limit) for item in items)
    budget.check_size(size + len(separator) * max(0, len(items) - 1), "join() making a string")


def _check_method(budget: _RenderBudget, method: Any, args: tuple, kwargs: dict) -> tuple:
    """Checks before a str/bytes method runs: its result is allocated in one go, in C."""
    wrapped = getattr(method, "__wrapped__", method)  # the sandbox wraps str.format
    owner = getattr(wrapped, "__self__", None)
    if not isinstance(owner, (str, bytes)):
        return args
    name = getattr(wrapped, "__name__", "")
    if name in ("center", "ljust", "rjust", "zfill"):
        _check_width(budget, args[0] if args else kwargs.get("width"), f"{name}() width")
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(size, int):
            budget.check_size(
                len(owner) + owner.count("\t" if isinstance(owner, str) else b"\t") * size,
                "expandtabs() making a string",
            )
    elif name == "replace":
        _check_replace(budget, owner, *args[:3])
    elif name == "join" and args:
        items = list(args[0])
        _check_join(budget, owner, items)
        args = (items, *args[1:])
    elif name == "translate" and args and isinstance(args[0], Mapping):
        widest = max((len(v) for v in args[0].values() if isinstance(v, str)), default=1)
        budget.check_size(len(owner) * widest, "translate() making a string")
    elif name in ("format", "format_map") and isinstance(owner, str):
        values = args[0] if name == "format_map" and args else kwargs
        _check_str_format(
            budget, owner, args if name == "format" else (), values if isinstance(values, Mapping) else {}
        )
    return args


def _check_filter(budget: _RenderBudget, name: str, args: list, kwargs: dict) -> None:
    """Checks before a size-making Jinja filter runs; ``args[0]`` is the filtered value."""
    value = args[0] if args else None

    def arg(index: int, key: str, default: Any = None) -> Any:
        return args[index] if len(args) > index else kwargs.get(key, default)

    if name == "center":
        _check_width(budget, arg(1, "width", 80), "center width")
    elif name == "indent":
        width = arg(1, "width", 4)
        if isinstance(value, str):
            indent = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
            budget.check_size(len(value) + (value.count("\n") + 1) * max(0, indent), "indent making a string")
    elif name == "wordwrap":
        wrapstring = arg(3, "wrapstring")
        width = arg(1, "width", 79)
        if isinstance(value, str) and isinstance(wrapstring, str) and isinstance(width, int) and width > 0:
            budget.check_size(len(value) + (len(value) // width + 1) * len(wrapstring), "wordwrap making a string")
    elif name in ("batch", "slice"):
        _check_width(budget, arg(1, "linecount" if name == "batch" else "slices"), f"{name} count")
    elif name == "truncate":
        _check_width(budget, arg(1, "length", 255), "truncate length")
    elif name == "replace":
        _check_replace(budget, value, arg(1, "old"), arg(2, "new"), arg(3, "count"))
    elif name == "format" and isinstance(value, str):
        _check_printf(budget, value, tuple(args[1:]) or dict(kwargs))
    elif name == "tojson":
        indent = arg(2, "indent")
        if isinstance(indent, (int, str)) and not isinstance(indent, bool):
            size = len(indent) if isinstance(indent, str) else indent
            if size > TOJSON_MAX_INDENT:
                raise RenderLimitExceeded(f"a tojson indent of {size:,} (at most {TOJSON_MAX_INDENT})")


def _metered_filter(name: str, func: Any) -> Any:
    """A filter that counts as a step, is checked before it runs and measured after."""
    from jinja2.utils import _PassArg

    skip = 1 if _PassArg.from_obj(func) is not None else 0  # context / environment comes first

    @functools.wraps(func)
    def metered(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.step()
        args = list(args)
        subject = args[skip:]
        if name in ("join", "sum") and subject and (name == "join" or not isinstance(subject[0], (str, bytes))):
            # materialize once (a generator cannot be measured and then joined)
            items = list(subject[0])
            if name == "join" and kwargs.get("attribute") is None and len(subject) < 3:
                separator = subject[1] if len(subject) > 1 else kwargs.get("d", "")
                _check_join(budget, separator if isinstance(separator, str) else "", items)
            elif name == "sum":
                budget.check_size(sum(_weight(item, budget.value_limit) for item in items), "sum making a value")
            args[skip] = subject[0] = items
        _check_filter(budget, name, subject, kwargs)
        return _produce(budget, func(*args, **kwargs), f"the {name} filter making a value")

    return metered


def _metered_iterate(iterable: Any) -> Iterator[Any]:
    """What every {% for %} loops over: each iteration is a step."""
    budget = _budget()
    for item in iterable:
        budget.step()
        yield item


def _measured(value: Any) -> Any:
    """The result of ``a ~ b`` (a Jinja concatenation no sandbox hook sees), measured."""
    return _produce(_budget(), value, "a ~ concatenation")


@lru_cache(maxsize=1)
def _environment_class() -> type:
    """The sandboxed environment with its limits (built on first use: jinja2 loads lazily)."""
    from jinja2 import nodes
    from jinja2.compiler import CodeGenerator
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class MeteredBuffer(list):
        """The output buffer of a macro, {% set %} block or filter block: every write counts."""

        __slots__ = ()

        def append(self, piece: Any) -> None:
            budget = _budget()
            budget.step()
            budget.produce(len(piece), "output")
            list.append(self, piece)

        def extend(self, pieces: Iterable[Any]) -> None:
            pieces = tuple(pieces)
            budget = _budget()
            budget.step()
            budget.produce(sum(len(piece) for piece in pieces), "output")
            list.extend(self, pieces)

    class BoundedCodeGenerator(CodeGenerator):
        # Python loops inside a rendering all run through here: buffered output, {% for %}
        # and ~. Everything else goes through the sandbox's call and binop hooks.
        def buffer(self, frame):
            frame.buffer = self.temporary_identifier()
            self.writeline(f"{frame.buffer} = environment.slmk_buffer()")

        def visit_For(self, node, frame):
            iterate = nodes.EnvironmentAttribute("slmk_iterate", lineno=node.lineno)
            node.iter = nodes.Call(iterate, [node.iter], [], None, None, lineno=node.lineno)
            super().visit_For(node, frame)

        def visit_Concat(self, node, frame):
            self.write("environment.slmk_measured(")
            super().visit_Concat(node, frame)
            self.write(")")

    class BoundedSandboxedEnvironment(ImmutableSandboxedEnvironment):
        """transformers' sandbox, with every way to loop or to make a big value metered."""

        code_generator_class = BoundedCodeGenerator
        intercepted_binops = frozenset({"*", "**", "%", "+"})
        slmk_buffer = MeteredBuffer

        @staticmethod
        def slmk_iterate(iterable: Any) -> Iterator[Any]:
            return _metered_iterate(iterable)

        @staticmethod
        def slmk_measured(value: Any) -> Any:
            return _measured(value)

        def call_binop(self, context, operator, left, right):
            budget = _budget()
            budget.step()
            if operator == "*":
                for sequence, times in ((left, right), (right, left)):
                    if isinstance(sequence, (str, bytes, list, tuple)) and isinstance(times, int):
                        unit = (
                            len(sequence)
                            if isinstance(sequence, (str, bytes))
                            else _weight(sequence, budget.value_limit)
                        )
                        budget.check_size(unit * max(times, 0), "a * repetition")
                if isinstance(left, int) and isinstance(right, int):
                    _check_int_bits(left.bit_length() + right.bit_length())
            elif operator == "**":
                if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
                    _check_int_bits(left.bit_length() * min(right, _MAX_INT_BITS + 1))
            elif operator == "%" and isinstance(left, str):
                _check_printf(budget, left, right)
            elif operator == "+" and isinstance(left, (str, bytes, list, tuple)) and isinstance(right, type(left)):
                budget.check_size(len(left) + len(right), "a + concatenation")
            return _produce(budget, super().call_binop(context, operator, left, right), f"a {operator} operation")

        def call(__self, __context, __obj, *args, **kwargs):
            budget = _budget()
            budget.step()
            args = _check_method(budget, __obj, args, kwargs)
            return _produce(budget, super().call(__context, __obj, *args, **kwargs), "a call's result")

    return BoundedSandboxedEnvironment


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    """Jinja's lipsum global, its sizes checked (it loops n x max times in one call)."""
    from jinja2.utils import generate_lorem_ipsum

    budget = _budget()
    for value in (n, min, max):
        _check_width(budget, value, "lipsum size")
    budget.check_size(n * max * 12, "lipsum text")
    return generate_lorem_ipsum(n, html, min, max)


# --------------------------------------------------------------------------- rendering
@lru_cache(maxsize=64)
def _compile(chat_template: str):
    """The template compiled in transformers' environment (same sandbox, globals, filters)."""
    import jinja2
    from jinja2.ext import Extension, loopcontrols

    class GenerationTag(Extension):
        # transformers' {% generation %} only marks assistant spans for training masks;
        # rendering is the body unchanged.
        tags = frozenset({"generation"})

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

        def _render_body(self, caller):
            return caller()

    class TemplateDict:
        # dict() without attribute access to the real type (as transformers does)
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        # namespaces refuse underscore names, so a template cannot reach interpreter internals
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} starts with an underscore")

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Jinja's own tojson HTML-escapes; chat templates expect plain JSON
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    environment_class = _environment_class()
    env = environment_class(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, loopcontrols])
    env.filters["tojson"] = tojson
    env.filters = {name: _metered_filter(name, func) for name, func in env.filters.items()}
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    env.globals["lipsum"] = _lipsum
    return env.from_string(chat_template)


# transformers copies a message's reasoning under each of these names before rendering
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _plain_messages(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Messages as transformers hands them to the template: plain dicts, no None values."""
    plain = []
    for message in messages:
        if not isinstance(message, Mapping):
            raise TypeError(f"a chat message is a mapping with role and content, not {message!r}")
        item = {key: value for key, value in message.items() if value is not None}
        reasoning = next((item[key] for key in _REASONING_FIELDS if item.get(key) is not None), None)
        if reasoning is not None:
            item = {"thinking": reasoning, **item, "reasoning_content": reasoning}
        plain.append(item)
    return plain


def render_chat_template(
    chat_template: str,
    messages: Iterable[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    special_tokens: Mapping[str, str] | Iterable[str] | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    **template_vars: Any,
) -> str:
    """Render a Hugging Face chat template exactly as ``apply_chat_template(tokenize=False)``.

    ``tools`` are OpenAI-style function tools (``{"type": "function", "function": {...}}``),
    the template's ``tools`` variable.

    ``special_tokens`` are the tokenizer's ``special_tokens_map`` (``bos_token``,
    ``eos_token`` ...); ``template_vars`` are extra variables (``enable_thinking``,
    ``date_string`` ...). The rendering runs in slmk's render worker process, metered
    (``RENDER_STEPS``, ``RENDER_VALUE_CHARS``) and bounded whatever the template does
    (``RENDER_SECONDS`` of CPU, ``RENDER_WALL_SECONDS``, ``RENDER_MEMORY_BYTES``). Raises
    ``ChatTemplateError``, one line,
    whenever the template does not parse, raises, goes over a limit, or fails in any other
    way for this conversation (``RenderLimitError``, ``UnsafeTemplateError`` and
    ``ChatTemplateSyntaxError`` say which).
    """
    from . import render_worker

    messages = list(messages)
    if not isinstance(chat_template, str):
        raise ChatTemplateError(
            f"the chat template is a {type(chat_template).__name__}, not text",
            hint="chat_template holds a Jinja string",
        )
    if chat_template in _EXCEEDED:
        raise _limit_error(_EXCEEDED[chat_template])
    variables = {**as_special_tokens(special_tokens), **template_vars}
    if tools:
        variables["tools"] = [dict(tool) for tool in tools]  # travels to the worker with the variables
    plain = _plain_messages(messages)
    try:
        return render_worker.render(chat_template, plain, add_generation_prompt, variables)
    except RenderLimitError as exc:
        _remember_exceeded(chat_template, exc.message.removeprefix(_LIMIT_PREFIX))
        raise


def render_in_process(
    chat_template: str, plain: list[dict[str, Any]], add_generation_prompt: bool, variables: Mapping[str, Any]
) -> str:
    """One metered rendering in this process: what the render worker runs for each request.

    Bounded by the step and size meters only; ``render_chat_template`` adds the process
    limits. ``plain`` are messages as ``_plain_messages`` makes them.
    """
    import jinja2
    from jinja2.sandbox import SecurityError

    if chat_template in _EXCEEDED:
        raise _limit_error(_EXCEEDED[chat_template])
    # str(), not _weight(): a caller's conversation may hold anything, a cycle included
    conversation_chars = sum(len(str(value)) for message in plain for value in message.values())
    variables = dict(variables)
    tools = variables.pop("tools", None)
    budget = _RenderBudget(
        conversation_chars + sum(len(str(value)) for value in variables.values()) + len(str(tools or ""))
    )
    token = _BUDGET.set(budget)
    try:
        try:
            compiled = _compile(chat_template)
        except jinja2.TemplateError as exc:
            raise ChatTemplateSyntaxError(
                f"the chat template does not parse: {_short(exc)}", hint="fix the Jinja syntax, or pass --template FILE"
            ) from exc
        except (RecursionError, MemoryError) as exc:
            raise ChatTemplateSyntaxError(
                f"the chat template does not parse: it is nested too deeply ({type(exc).__name__})",
                hint="fix the Jinja syntax, or pass --template FILE",
            ) from exc
        pieces = []
        for piece in compiled.generate(
            messages=plain, tools=tools, documents=None, add_generation_prompt=add_generation_prompt, **variables
        ):
            budget.step()
            budget.produce(len(piece), "output")
            pieces.append(piece)
        return "".join(pieces)
    except RenderLimitExceeded as exc:
        _remember_exceeded(chat_template, str(exc))
        raise _limit_error(str(exc)) from None
    except MemoryError:
        pieces = compiled = None  # give the memory back before building the error
        raise _limit_error("it needed more memory than a rendering may take") from None
    except ChatTemplateError:
        raise
    except SecurityError as exc:
        raise UnsafeTemplateError(
            f"the chat template reaches for something the sandbox refuses: {_short(exc)}",
            hint="a chat template only formats messages; fix it, or pass --template FILE",
        ) from exc
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(
            f"the chat template raised for a conversation of {_roles(plain)}: {_short(exc)}",
            hint="the model's chat template does not accept this conversation",
        ) from exc
    except RecursionError as exc:
        raise ChatTemplateError(
            f"the chat template recursed too deeply for a conversation of {_roles(plain)}",
            hint="a macro or recursive loop in the chat template does not stop; fix it or pass --template FILE",
        ) from exc
    except Exception as exc:  # OverflowError, TypeError ...: still one line
        raise ChatTemplateError(
            f"the chat template failed for a conversation of {_roles(plain)}: {type(exc).__name__}: {_short(exc)}",
            hint="fix the chat template, or pass --template FILE",
        ) from exc
    finally:
        _BUDGET.reset(token)


def _remember_exceeded(chat_template: str, reason: str) -> None:
    if len(_EXCEEDED) >= _EXCEEDED_MAX:
        _EXCEEDED.clear()
    _EXCEEDED[chat_template] = reason


_LIMIT_PREFIX = "the chat template went over a render limit: "


def _limit_error(reason: str) -> RenderLimitError:
    return RenderLimitError(
        _LIMIT_PREFIX + reason,
        hint="a chat template loops, recurses or builds text far beyond what a prompt needs; "
        "fix it, or pass --template FILE",
    )


def _roles(messages: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(str(m.get("role")) for m in messages if isinstance(m, Mapping))[:200]


def _short(exc: BaseException, limit: int = 200) -> str:
    """An exception's text on one line, cut (a template can raise a megabyte of message)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def as_special_tokens(value: Mapping[str, Any] | Iterable[str] | None) -> dict[str, str]:
    """Special tokens as template variables.

    A mapping (``{"bos_token": "<s>", ...}``, AddedToken dicts allowed) is taken as is. A
    plain list of token strings is mapped by well-known names: the first known BOS in the
    list is ``bos_token`` and the first known EOS is ``eos_token``; pass a mapping
    (``special_tokens_for(info)``) to be exact.
    """
    if not value:
        return {}
    if isinstance(value, Mapping):
        tokens = {}
        for key, token in value.items():
            if isinstance(token, Mapping):
                token = token.get("content")
            if isinstance(token, str):
                tokens[key] = token
        return tokens
    listed = [token for token in value if isinstance(token, str)]
    tokens = {}
    bos = next((t for t in listed if t in _KNOWN_BOS), None)
    eos = next((t for t in listed if t in _KNOWN_EOS), None)
    if bos:
        tokens["bos_token"] = bos
    if eos:
        tokens["eos_token"] = eos
    return tokens


def special_tokens_for(info: ModelInfo) -> dict[str, str]:
    """What transformers passes to a model's chat template: its ``special_tokens_map``."""
    tokens = {}
    for key in SPECIAL_TOKEN_KEYS:
        token = info.special_token(key)
        if token:
            tokens[key] = token
    return tokens


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
@dataclass(frozen=True)
class ResolvedTemplate:
    """The PromptTemplate slmk will write for a model, and where it came from."""

    template: PromptTemplate
    family: str | None
    source: str  # "file:PATH", "family:NAME", "chat_template"
    notes: tuple[str, ...] = ()


def model_identity(info: ModelInfo) -> tuple[str, tuple[str, ...]]:
    """``model_type`` and ``architectures`` of an HF folder, or of the model an slmk build came from."""
    build = info.build_info or {}
    # a build's genai_config names a runtime model type; slmk_build.json keeps config.json's
    model_type = build.get("model_type") or info.model_type or ""
    architectures = info.architectures or tuple(build.get("architectures") or ())
    return model_type, tuple(architectures)


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


def resolve_family(registry: Registry, info: ModelInfo) -> ModelFamily | None:
    """The family that scores highest for this model (ties: by name), or None."""
    best_score, chosen = 0, None
    for name, family in sorted(registry.model_families.items()):
        try:
            score = int(family.match(info) or 0)
        except BaseException as exc:  # a broken family plugin must not stop the others
            contain_plugin_failure(exc, _family_plugin(registry, name), f"family {name!r} matching a model")
            continue
        if score > best_score:
            best_score, chosen = score, family
    return chosen


def _family_plugin(registry: Registry, name: str) -> str:
    try:
        return registry.owner("slmk_model_families", name)
    except KeyError:  # a family handed in directly, not through a hook
        return "?"


def family_prompt_template(registry: Registry, family: ModelFamily, info: ModelInfo) -> PromptTemplate:
    """``family.prompt_template(info)``, checked: a plugin that raises or returns something
    else than a PromptTemplate is one line naming the family and its plugin."""
    plugin = _family_plugin(registry, family.name)
    try:
        template = family.prompt_template(info)
    except SlmkError:
        raise
    except BaseException as exc:  # a plugin bug: name the plugin, keep the one-line error
        contain_plugin_failure(exc, plugin, f"family {family.name!r} giving a prompt template")
        detail = f"raised {type(exc).__name__}: {_short(exc)}"
    else:
        if isinstance(template, PromptTemplate):
            return template
        detail = f"returned {type(template).__name__}, not a PromptTemplate"
    raise SlmkError(
        f"family {family.name!r} of plugin {plugin!r} failed to give a prompt template: {detail}",
        hint=f"fix or disable the plugin (SLMK_DISABLE_PLUGINS={plugin}), or pass --template FILE",
    )


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
    family = resolve_family(registry, info)
    family_name = family.name if family else None
    chat_template = info.chat_template
    notes: list[str] = []
    if template is not None:
        source = template.source
    elif family is not None:
        template = family_prompt_template(registry, family, info)
        source = template.source or f"family:{family.name}"
    elif chat_template:
        template = derive_prompt_template(chat_template, tokens)
        source = "chat_template"
    else:
        model_type, _ = model_identity(info)
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
