"""The bounded chat-template renderer: a model's Jinja chat template rendered exactly as
transformers' ``tokenizer.apply_chat_template(..., tokenize=False)`` does, in a metered
sandbox, inside a limited worker process (render_worker.py). The error classes are the kernel's
(``slmk.api.templates``), so callers catch them without loading this plugin.

``render_chat_template`` uses the same sandboxed Jinja environment, globals, filters and
template variables as transformers, so what slmk checks against is what Foundry Local v2
and onnxruntime-genai feed the model. Whatever the template does, one rendering ends in
text or in a one-line ``ChatTemplateError``: never a hang, a crash or unbounded memory.
The PromptTemplate derivation that builds on it lives in ``prompt_template.py``.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from slmk.api.templates import (
    ChatTemplateError,
    ChatTemplateSyntaxError,
    RenderLimitError,
    UnsafeTemplateError,
)

if TYPE_CHECKING:
    from slmk.api import ModelInfo

#: Names transformers passes to the template from ``tokenizer.special_tokens_map``.
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


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


#: The errors that say the template itself is unusable, whatever the conversation: a model
#: whose own chat template ends in one of these cannot run, so no family or file hides it.
UNUSABLE_TEMPLATE_ERRORS = (ChatTemplateSyntaxError, UnsafeTemplateError, RenderLimitError)


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
