"""The records plugins return from their hooks.

Each record is a frozen dataclass: a name, what it supports, and the callables that
do the work. Records are declarative so the kernel can list, validate and plan with
them without running anything (the style of conda's plugin records).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    from .builds import BuildResult, Plan
    from .modelinfo import ModelInfo
    from .plugins import Registry
    from .progress import Progress

T = TypeVar("T")

#: Every precision slmk knows, smallest first. Plugins declare which they reach.
PRECISIONS: tuple[str, ...] = ("int4", "int8", "fp16", "bf16", "fp32")

#: Model formats a step reads or writes.
FORMAT_HF = "hf"  # a Hugging Face folder (config.json + weights)
FORMAT_ORTGENAI = "ortgenai"  # an ONNX Runtime GenAI folder (genai_config.json + model.onnx)


#: What a record's name may be: lower case letters, digits, ``-``, ``_`` and ``.`` (a setting's table).
RECORD_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")


# --------------------------------------------------------------------------- records
@dataclass(frozen=True)
class Record:
    """What every record a hook returns shares: a name users type, and a priority.

    The name is checked when the record is made, so a plugin with a bad name fails in
    its own hook (reported by ``slmk plugins``), not later when a user types it.
    ``priority`` orders records of one kind where slmk picks one: the highest is the
    default runtime or installer, the planner prefers the highest converter.
    """

    name: str
    _: KW_ONLY
    priority: int = 0  # where slmk picks one record of a kind (default runtime, installer, converter): highest wins

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not RECORD_NAME.fullmatch(name):
            raise ValueError(
                f"{type(self).__name__} name {name!r} is not usable: lower case letters, digits, '-', '_', '.'"
            )
        if not isinstance(self.priority, int) or isinstance(self.priority, bool):
            raise ValueError(f"{type(self).__name__} {name!r}: priority must be an int, not {self.priority!r}")


# --------------------------------------------------------------------------- probes
@dataclass(frozen=True)
class ProbeResult:
    """One finding of a probe. ``status`` is ``ok``, ``warn`` or ``fail``."""

    name: str
    status: str
    detail: str
    fix: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in ("ok", "warn", "fail"):
            raise ValueError(f"ProbeResult.status must be ok, warn or fail, not {self.status!r}")


@dataclass(frozen=True)
class Probe(Record):
    """A check of the environment. ``check()`` never raises; it returns findings."""

    name: str
    description: str
    check: Callable[[], Iterable[ProbeResult]]


# ------------------------------------------------------------- execution providers
@dataclass(frozen=True)
class Usability:
    """Whether an execution provider can run here, and why (not)."""

    usable: bool
    reason: str
    fix: str = ""


@dataclass(frozen=True)
class ExecutionProvider(Record):
    """Hardware to build for and run on, as slmk names it and users see it.

    The record says nothing about any tool: each tool plugin maps slmk's ``name`` to its
    tool's own names (onnxruntime's provider, the model builder's ``-e``, Olive's device,
    Foundry Local's variant suffix) in its own module, with ``tool_name``. ``probe()`` must
    be cheap, never raise, and import nothing heavy at module level.
    """

    name: str  # slmk's name: "cpu", "cuda", "dml", "webgpu"
    description: str
    build_precisions: tuple[str, ...]  # precisions a build for it can have
    run_precisions: tuple[str, ...]  # what loads and runs on it
    probe: Callable[[], Usability]
    aliases: tuple[str, ...] = ()  # other names users may type ("gpu" for "cuda")

    def tool_name(self, names: Mapping[str, T], tool: str) -> T:
        """This provider's name in ``tool``, looked up in the tool plugin's ``names`` (slmk's name -> the tool's).

        A one-line UsageError when ``names`` has no entry for it: the tool cannot use it."""
        if self.name not in names:
            from .errors import UsageError

            raise UsageError(
                f"{tool} does not know the execution provider {self.name!r}",
                hint=f"{tool} maps: {', '.join(sorted(names))}; choose one with -e",
            )
        return names[self.name]


# ------------------------------------------------------------------ model families
@dataclass(frozen=True)
class PromptTemplate:
    """The four pieces Foundry Local's legacy ``inference_model.json`` carries.

    Each piece holds ``{Content}`` where the message text goes. A conversation is
    rendered by concatenating ``system`` (if any), then ``user``/``assistant`` for
    the earlier turns, then ``prompt`` for the last user message.
    """

    system: str
    user: str
    assistant: str
    prompt: str
    source: str = ""  # where it came from: "family:qwen2", "chat_template", "file:..."

    def render(self, messages: Iterable[Mapping[str, str]]) -> str:
        """The prompt text for ``messages`` (ending with a user message), filled into the pieces."""
        messages = list(messages)
        if not messages or messages[-1].get("role") != "user":
            raise ValueError("a prompt is rendered for a conversation that ends with a user message")
        pieces = {"system": self.system, "user": self.user, "assistant": self.assistant}
        out = []
        for message in messages[:-1]:
            role = message["role"]
            if role not in pieces:
                raise ValueError(f"unknown role {role!r}")
            out.append(pieces[role].replace("{Content}", message["content"]))
        out.append(self.prompt.replace("{Content}", messages[-1]["content"]))
        return "".join(out)

    def to_foundry(self) -> dict[str, str]:
        """The four pieces as inference_model.json's ``PromptTemplate`` object."""
        return {"system": self.system, "user": self.user, "assistant": self.assistant, "prompt": self.prompt}


@dataclass(frozen=True)
class ToolCallFormat:
    """How a family's models write tool calls, so a server can parse them and constrain them.

    The model writes ``start``, then the call(s) as JSON, then ``end``: one JSON object per
    call, each wrapped in ``start``/``end`` (Qwen/Hermes ``<tool_call>{...}</tool_call>``),
    or, with ``json_list``, one JSON list of calls after one ``start`` (Mistral's
    ``[TOOL_CALLS] [...]``). An empty ``start`` means the answer is the bare JSON object
    (Llama 3). A call object holds ``name`` and ``arguments_key`` (``parameters`` for
    Llama 3). ``start_is_token``: start/end are special tokens, which the tokenizer's
    decoding drops from the answer: an answer that is the bare JSON is read as the call.
    ``tools_in_system``: the template reads the tools as a JSON string from the system
    message's ``tools`` key (Phi-4-mini), not from ``tools``. ``call_id_length``: the
    template takes call ids of exactly that many letters and digits (Mistral: 9); 0: any.
    ``parse`` replaces the generic parser for a format these fields cannot say: it takes
    the answer and returns (text before the calls, [{"name", "arguments"}]) or None.
    """

    start: str
    end: str = ""
    json_list: bool = False
    arguments_key: str = "arguments"
    start_is_token: bool = False
    tools_in_system: bool = False
    call_id_length: int = 0
    parse: Callable[[str], tuple[str, list[dict[str, Any]]] | None] | None = None


@dataclass(frozen=True)
class ModelFamily(Record):
    """A model family: how to recognise it and how to prompt it.

    ``match(info)`` returns a score (0: not this family; higher wins; a family that
    knows the exact architecture should return more than one that guesses from the
    chat template). ``prompt_template(info)`` returns the PromptTemplate for that model.
    """

    name: str
    description: str
    match: Callable[[ModelInfo], int]
    prompt_template: Callable[[ModelInfo], PromptTemplate]
    stop_tokens: tuple[str, ...] = ()
    generation_defaults: Mapping[str, Any] = field(default_factory=dict)
    chat_template: str | None = None  # the family's published Jinja chat template
    tool_calls: ToolCallFormat | None = None  # None: the family's models are not known to call tools


# ------------------------------------------------------------------ template engines
@dataclass(frozen=True)
class ResolvedTemplate:
    """The PromptTemplate slmk writes for a model, the family it chose (None: none claims the
    model), where the pieces came from (``file:PATH``, ``family:NAME``, ``chat_template``),
    and notes on what the pieces cannot say or whether they round-trip."""

    template: PromptTemplate
    family: str | None
    source: str
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class TemplateEngine(Record):
    """Renders models' chat templates and cuts them into PromptTemplates: what ``slmk.api.templates``
    calls (the highest priority engine installed), for the kernel and every plugin.

    ``render_chat_template(chat_template, messages, *, add_generation_prompt=True,
    special_tokens=None, tools=None, **template_vars)`` renders as transformers'
    ``apply_chat_template(tokenize=False)`` does, bounded: any failure is a one-line
    ``ChatTemplateError``. ``special_tokens_for(info)`` gives the tokens transformers passes to
    the template. ``derive_prompt_template(chat_template, special_tokens, *, source)``,
    ``check_round_trip(chat_template, template, special_tokens)`` (a report with ``notes``, or
    ``TemplateMismatch``), ``sample_rendering(info)`` and ``resolve_template(registry, info,
    template_file)`` are the functions of the same names in ``slmk.api.templates``.
    """

    name: str
    description: str
    render_chat_template: Callable[..., str]
    special_tokens_for: Callable[[ModelInfo], dict[str, str]]
    derive_prompt_template: Callable[..., PromptTemplate]
    check_round_trip: Callable[..., Any]
    sample_rendering: Callable[[ModelInfo], str | None]
    resolve_template: Callable[[Registry, ModelInfo, Path | None], ResolvedTemplate]


# -------------------------------------------------------- converters and quantizers
@dataclass(frozen=True)
class StepRequest:
    """What a converter or quantizer is asked to do.

    ``output`` is an empty folder owned by the kernel: write everything there. The
    kernel renames it into place only when the call returns without raising.
    """

    source: Path
    output: Path
    precision: str
    execution_provider: ExecutionProvider
    options: Mapping[str, Any]
    work_dir: Path  # scratch and tool caches for this step
    progress: Progress
    calibration: Path | None = None
    trust_remote_code: bool = False


# --------------------------------------------------------------------------- conversions
@dataclass(frozen=True)
class ConvertRequest:
    """One conversion as the user asked for it: from the CLI (or Python) to a model source and the planner.

    ``output`` None: ``build/NAME-PRECISION-EP``. ``options`` are converter/quantizer options
    (``-O KEY=VALUE``), checked against what the planned steps declare; ``quantization`` holds
    ``algorithm``, ``block_size`` ... (``[quantization]`` of slmk.toml). ``plugin_settings``:
    plugins' settings by key (None: slmk.toml and the environment decide); a converter whose
    ``selected_by`` key is set there is used. ``base``/``source_mode``: for a folder a model
    source claims (an adapter). ``verify``: check the build against its source model on
    ``verify_prompts`` (None: slmk's own). ``plan_only``: stop at the plan.
    """

    model: Path | None
    output: Path | None = None
    precision: str = "int4"
    execution_provider: str = "cpu"
    via: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    quantization: Mapping[str, Any] = field(default_factory=dict)
    calibration: Path | None = None
    search: Mapping[str, Any] = field(default_factory=dict)
    plugin_settings: Mapping[str, Any] | None = None
    base: Path | None = None
    source_mode: str | None = None
    force: bool = False
    trust_remote_code: bool = False
    plan_only: bool = False
    verify: bool = True
    verify_prompts: Sequence[Sequence[Mapping[str, str]]] | None = None
    cache_dir: Path | None = None
    progress: Progress | None = None


@dataclass(frozen=True)
class Converter(Record):
    """Turns a Hugging Face folder into an ONNX Runtime GenAI folder.

    ``explicit_only``: the planner never picks it on its own (a converter for some models
    only, or one that needs an option), only when it is named with ``--via`` or selected
    by its setting. ``selected_by``: a setting whose value, when set, selects this
    converter and is passed as the option of the same name (``olive.config`` ->
    ``olive_config``); ``default_model`` then reads the model from those options when the
    user names none. ``prepare`` (converters and quantizers alike) checks and completes
    the options before planning.
    """

    name: str
    description: str
    precisions: tuple[str, ...]  # reached natively by this converter
    execution_providers: tuple[str, ...]  # slmk EP names it builds for
    convert: Callable[[StepRequest], None]
    input_format: str = FORMAT_HF
    output_format: str = FORMAT_ORTGENAI
    supports: Callable[[ModelInfo], str | None] | None = None  # None, or why not
    tool_versions: Callable[[], Mapping[str, str]] = dict  # part of the step cache key
    accepts_quantized_input: bool = False  # converts HF weights another tool quantized
    options: Mapping[str, str] = field(default_factory=dict)  # option name -> help
    algorithms: tuple[str, ...] = ()  # weight quantization algorithms it runs itself (besides "default")
    quantization_options: tuple[str, ...] = ()  # options that only matter when it quantizes (not in an fp32 key)
    explicit_only: bool = False  # planned only when named itself (--via NAME) or selected by its setting
    selected_by: str | None = None  # a setting key ("olive.config"): when set, this converter is used
    prepare: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None  # check/complete options (UsageError)
    default_model: Callable[[Mapping[str, Any]], str | None] | None = None  # the model its options name, if any


@dataclass(frozen=True)
class Quantizer(Record):
    """Lowers the precision of a model, on HF weights (``stage="hf"``) or on ONNX."""

    name: str
    description: str
    stage: str  # FORMAT_HF or FORMAT_ORTGENAI
    precisions: tuple[str, ...]
    quantize: Callable[[StepRequest], None]
    algorithms: tuple[str, ...] = ()
    uses_calibration: bool = False
    tool_versions: Callable[[], Mapping[str, str]] = dict
    options: Mapping[str, str] = field(default_factory=dict)
    prepare: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None  # check/complete options (UsageError)


# ---------------------------------------------------------------------- build checks
@dataclass(frozen=True)
class BuildCheck(Record):
    """Checks a build against its source model around the pipeline (``slmk convert``).

    ``start(request, info, registry)`` is called once the plan is made with the ConvertRequest,
    the source folder's ModelInfo and the registry, and returns an object with two methods:
    ``before(final_key)``, called ahead of the first step with the key that names the whole
    build (run the source there, while nothing else is loaded), and ``after(folder)``, called
    on the finished build before it is renamed into place. ``after`` returns the verdict,
    recorded as ``verification`` in slmk_build.json: ``status`` (``verified``, ``measured``,
    ``not verified`` with a ``reason``) and, optionally, ``summary``: the line ``convert``,
    ``inspect`` and ``list`` show after the status; it raises SlmkError to refuse the build
    (nothing is kept). The check with the highest priority runs; with none installed a build
    records ``not verified: no build check installed``, and ``--no-verify``
    (``ConvertRequest.verify`` False) starts none.
    """

    name: str
    description: str
    start: Callable[[ConvertRequest, ModelInfo, Registry], Any]


@dataclass(frozen=True)
class BuildPipeline(Record):
    """Plans and runs a conversion (``slmk convert``); the one with the highest priority is used.

    ``plan(registry, info, ep, request)`` returns the Plan for the ConvertRequest (its precision,
    ``via``, quantization, calibration and ``-O`` options), or raises a one-line SlmkError saying
    why nothing fits; ``slmk convert --plan`` stops there. ``run(registry, info, plan, request,
    check)`` builds it into ``request.output`` and returns a BuildResult; ``check`` is the started
    build check (``before(final_key)`` ahead of the first step, ``after(folder)`` on the finished
    build, its verdict recorded as ``verification`` in slmk_build.json).
    """

    name: str
    description: str
    plan: Callable[[Registry, ModelInfo, ExecutionProvider, ConvertRequest], Plan]
    run: Callable[[Registry, ModelInfo, Plan, ConvertRequest, Any], BuildResult]


# ------------------------------------------------------------------------ installers
@dataclass(frozen=True)
class InstalledModel:
    """A model an installer has put in place."""

    name: str
    version: str
    path: Path
    installer: str
    precision: str | None = None
    execution_provider: str | None = None
    size_bytes: int = 0
    runtimes: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        """``name:version``, the form the CLI takes."""
        return f"{self.name}:{self.version}"


@dataclass(frozen=True)
class InstallRequest:
    """What an installer is asked to do: the build, the name, the template, where."""

    build_dir: Path
    name: str
    execution_provider: ExecutionProvider
    template: PromptTemplate | None
    progress: Progress
    cache_dir: Path | None = None
    force: bool = False
    chat_template: str | None = None  # replaces the tokenizer's chat template when given


@dataclass(frozen=True)
class Installer(Record):
    """Puts a built model where a runtime finds it, lists and removes it."""

    name: str
    description: str
    install: Callable[[InstallRequest], InstalledModel]
    list: Callable[[Path | None], list[InstalledModel]]
    remove: Callable[[str, str | None, Path | None], InstalledModel]
    locate: Callable[[Path | None], Path]  # the cache folder it would use


# -------------------------------------------------------------------------- runtimes
@dataclass(frozen=True)
class GenerationStats:
    """Token counts and timings of one generation (``ChatSession.last_stats``)."""

    prompt_tokens: int
    generated_tokens: int
    time_to_first_token_s: float
    total_s: float

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens per second after the first token (0 when fewer than two were generated)."""
        decode_time = self.total_s - self.time_to_first_token_s
        return (self.generated_tokens - 1) / decode_time if self.generated_tokens > 1 and decode_time > 0 else 0.0

    @property
    def prompt_tokens_per_s(self) -> float:
        """Prompt tokens per second until the first token (prefill speed)."""
        return self.prompt_tokens / self.time_to_first_token_s if self.time_to_first_token_s > 0 else 0.0


@runtime_checkable
class ChatSession(Protocol):
    """A loaded model. ``generate`` streams text pieces (one per token where the
    runtime allows) and sets ``last_stats`` when the stream ends."""

    last_stats: GenerationStats | None

    def generate(self, messages: list[Mapping[str, str]], **search: Any) -> Iterator[str]:
        """Stream the answer to ``messages`` as text pieces; set ``last_stats`` when it ends."""

    def close(self) -> None:
        """Free the model; the session cannot generate afterwards."""


@dataclass(frozen=True)
class LoadRequest:
    """What a runtime is asked to load: a folder, the EP, and the install it belongs to."""

    path: Path  # a built or installed model folder
    execution_provider: ExecutionProvider
    installed: InstalledModel | None = None
    cache_dir: Path | None = None  # the installer's cache, for runtimes that need it
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Runtime(Record):
    """Loads a model folder and generates."""

    name: str
    description: str
    load: Callable[[LoadRequest], ChatSession]
    can_load: Callable[[Path], str | None] | None = None  # None, or why not
    input_format: str = FORMAT_ORTGENAI  # what it loads: builds, or FORMAT_HF (the source model itself)
    batches: bool = False  # takes the load option max_batch and may return a BatchingSession


@runtime_checkable
class ScoringSession(ChatSession, Protocol):
    """What measurement needs beyond chatting (``bench``, ``validate``, ``compare``).

    A runtime whose sessions offer these gets exact token counts and perplexity; one
    that does not is measured through ``last_stats`` alone and skips perplexity.
    """

    context_length: int

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, as the model's tokenizer makes them."""

    def decode(self, token_ids: Sequence[int]) -> str:
        """The text of ``token_ids``."""

    def render_prompt(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The prompt the model's chat template makes of ``messages``."""

    def score(self, text: str) -> tuple[float, int]:
        """Teacher-forced negative log-likelihood of ``text``: (sum in nats, tokens scored)."""


@runtime_checkable
class BatchingSession(ChatSession, Protocol):
    """A session that decodes many sequences together on one copy of the weights (continuous batching).

    A runtime returns one when ``LoadRequest.options`` has ``max_batch``. ``begin`` checks a
    request and renders its prompt without running the model; each ``advance`` gives every
    sequence passed one more token (new ones are fed their prompt first, then join), so a
    sequence joins the running batch whenever it is passed and leaves when it is done or
    released. One thread calls ``advance``.
    """

    max_batch: int
    context_length: int
    batched_search: frozenset[str]

    def begin(self, messages: Sequence[Mapping[str, str]], **search: Any) -> Any:
        """A new sequence (``.done``, ``.tokens``, ``.stats``, ``.finish_reason``); raises on bad options."""

    def begin_ids(self, prompt_ids: Sequence[int], **search: Any) -> Any:
        """The same for a prompt given as token ids (no chat template)."""

    def advance(self, sequences: Sequence[Any]) -> Mapping[Any, str]:
        """One token for each of ``sequences``: the text each one's token completes."""

    def release(self, sequence: Any) -> None:
        """Drop a sequence that will not be advanced again (cancelled): its cache is freed."""

    def solo(self) -> ChatSession:
        """A plain session of the same model for requests the batch cannot take (``batched_search``
        names the search options a batched sequence takes); runs one at a time."""


# --------------------------------------------------------------------------- model sources
@dataclass(frozen=True)
class ModelSource(Record):
    """A kind of model folder that is not a plain Hugging Face model, e.g. a PEFT LoRA adapter.

    ``detect(path)`` says whether a folder is one (cheap, JSON only). ``describe(path,
    base)`` is what `slmk inspect` shows; ``materialize(path, base, progress)`` returns a
    Hugging Face folder the rest of slmk can take (e.g. the adapter merged into its
    base; cached). ``base`` is the user's ``--base`` or None. For modes beyond
    materialize-then-convert (e.g. a base with separate adapter files), ``convert(request)``
    builds it from the whole ConvertRequest (``request.source_mode`` is one of ``modes`` other
    than the first) and returns what ``slmk.api.convert`` returns: a BuildResult, or the Plan
    when ``request.plan_only``. None: the source has one mode.
    """

    name: str
    description: str
    detect: Callable[[Path], bool]
    describe: Callable[[Path, Path | None], Mapping[str, Any]]
    materialize: Callable[[Path, Path | None, Progress], Path]
    convert: Callable[[ConvertRequest], BuildResult | Plan] | None = None
    modes: tuple[str, ...] = ()


# --------------------------------------------------------------------------- commands
@dataclass(frozen=True)
class Command(Record):
    """An ``slmk`` sub-command a plugin contributes.

    ``load()`` returns the ``click.Command``; it is called only when the command runs or
    its own help is shown, so a plugin imports click and its heavy libraries there.
    ``summary`` is the line ``slmk --help`` shows.
    """

    name: str
    summary: str
    load: Callable[[], Any]


# --------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Setting(Record):
    """A key of slmk.toml, with its type, default and check.

    The kernel declares its own; a plugin declares its keys through ``slmk_settings``
    under its own table (``serve.port``). ``flag`` (``--olive-config``) adds a command-line
    option for it to each command named in ``commands``.
    """

    name: str  # the key: ``serve.port``
    type: type
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], bool] | None = None
    check_help: str = ""
    flag: str | None = None
    commands: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """The key in slmk.toml (the record's name)."""
        return self.name

    @property
    def env(self) -> str:
        """The environment variable that sets it: ``serve.port`` -> ``SLMK_SERVE__PORT``."""
        return "SLMK_" + self.key.upper().replace(".", "__")


# ------------------------------------------------------------------------ executors
@dataclass(frozen=True)
class Task:
    """One unit of work an executor runs: a top-level function and plain-data arguments.

    ``function`` must be importable by name (a module-level function), and ``args``
    plain data (paths, strings, dicts): executors ship both to other processes or
    nodes. ``num_cpus`` and ``memory_bytes`` are what it needs; an ``exclusive``
    task (a measurement) runs alone so its figures are not disturbed; a task with an
    ``accelerator`` ("cuda") goes only where that accelerator is usable; a task whose
    worker dies is run again up to ``retries`` times.
    """

    name: str
    function: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    num_cpus: float = 1.0
    memory_bytes: int = 0
    exclusive: bool = False
    accelerator: str | None = None
    retries: int = 2


@dataclass(frozen=True)
class TaskResult:
    """What a finished task returned, and where it ran (``node``: a name a person can read)."""

    value: Any
    node: str
    seconds: float
    attempts: int = 1


@dataclass(frozen=True)
class ExecutorOptions:
    """How to open an executor: ``workers`` at once (local), a cluster ``address``
    (``None``: start one embedded), ``num_cpus`` of an embedded cluster, a ``temp_dir``
    for the executor's own files, and executor-specific ``extra`` settings."""

    workers: int = 1
    address: str | None = None
    num_cpus: int | None = None
    temp_dir: Path | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class ExecutorSession(Protocol):
    """An open executor. ``submit`` returns a ``concurrent.futures.Future`` that
    resolves to a ``TaskResult`` (or raises the task's error); ``close`` stops it and
    everything it started."""

    def submit(self, task: Task) -> Any:
        """Start ``task``; a ``concurrent.futures.Future`` of its ``TaskResult``."""

    def close(self) -> None:
        """Stop the session and everything it started."""


@dataclass(frozen=True)
class Executor(Record):
    """Runs tasks somewhere: in this process, in local worker processes, on a cluster."""

    name: str
    description: str
    open: Callable[[ExecutorOptions], ExecutorSession]


#: The hook name for each record type, used to validate what plugins return.
RECORD_TYPES: dict[str, type] = {
    "slmk_probes": Probe,
    "slmk_execution_providers": ExecutionProvider,
    "slmk_model_families": ModelFamily,
    "slmk_converters": Converter,
    "slmk_quantizers": Quantizer,
    "slmk_installers": Installer,
    "slmk_runtimes": Runtime,
    "slmk_executors": Executor,
    "slmk_model_sources": ModelSource,
    "slmk_commands": Command,
    "slmk_settings": Setting,
    "slmk_build_checks": BuildCheck,
    "slmk_template_engines": TemplateEngine,
    "slmk_build_pipelines": BuildPipeline,
}
