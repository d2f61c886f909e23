"""Choose the steps that take a model to a precision on an execution provider.

Three shapes of plan, from what the installed plugins declare:
  direct:            convert (a converter that reaches the precision itself)
  quantize-convert:  quantize the HF weights, then convert them (e.g. Olive RTN/GPTQ + builder)
  convert-quantize:  convert at fp32, then quantize the ONNX model (e.g. MatMulNBits)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .errors import SlmkError, UsageError, call_plugin
from .modelinfo import ModelInfo
from .plugins import Registry
from .records import FORMAT_HF, FORMAT_ORTGENAI, PRECISIONS, Converter, ExecutionProvider, Quantizer


@dataclass(frozen=True)
class PlannedStep:
    """One step of a plan: convert or quantize, with which tool, to which precision and format."""

    kind: str  # "convert" or "quantize"
    tool: str  # the converter or quantizer name
    plugin: str  # the plugin that provides it
    precision: str  # the precision this step produces
    input_format: str
    output_format: str
    options: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """The step as one line for progress and `--plan`."""
        return f"{self.kind} with {self.tool} ({self.plugin}) -> {self.precision} {self.output_format}"


@dataclass(frozen=True)
class Plan:
    """The steps that take a model to a precision on an EP, and why they were chosen."""

    precision: str
    execution_provider: str
    shape: str
    steps: tuple[PlannedStep, ...]
    why: str

    def as_dict(self) -> dict[str, Any]:
        """The plan as JSON-ready data (`slmk convert --plan --json`)."""
        return {
            "precision": self.precision,
            "execution_provider": self.execution_provider,
            "shape": self.shape,
            "why": self.why,
            "steps": [asdict(step) for step in self.steps],
        }


def check_precision(ep: ExecutionProvider, precision: str) -> None:
    """Refuse a precision the EP cannot build or cannot run, naming the alternatives."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}", hint=f"choose one of {', '.join(PRECISIONS)}")
    runnable = ", ".join(p for p in ep.run_precisions)
    if precision not in ep.build_precisions:
        raise UsageError(
            f"{precision} cannot be built for the {ep.name} execution provider", hint=f"{ep.name} runs {runnable}"
        )
    if precision not in ep.run_precisions:
        raise UsageError(
            f"{precision} builds for {ep.name} but does not load there",
            hint=f"use one of {runnable} on {ep.name}, or another execution provider",
        )


def _without_quantization(converter: Converter, options: dict[str, Any]) -> dict[str, Any]:
    """An fp32 conversion ignores quantization options: keep them out of its cache key, so
    changing the block size does not rebuild the fp32 step."""
    return {k: v for k, v in options.items() if k not in converter.quantization_options}


def known_algorithms(registry: Registry) -> list[str]:
    """Every weight quantization algorithm a converter or quantizer declares, plus ``default``."""
    found = {"default"}
    for record in (*registry.converters.values(), *registry.quantizers.values()):
        found.update(record.algorithms)
    return sorted(found)


def _matches(via: str | None, registry: Registry, hook: str, record_name: str) -> bool:
    return via is None or via in (record_name, registry.owner(hook, record_name))


def _converter_blocker(converter: Converter, info: ModelInfo, plugin: str) -> str | None:
    if not converter.supports:
        return None
    return call_plugin(plugin, f"converter {converter.name!r} checking the model", converter.supports, info)


def make_plan(
    registry: Registry,
    info: ModelInfo,
    precision: str,
    ep: ExecutionProvider,
    *,
    via: str | None = None,
    algorithm: str = "default",
    calibration: bool = False,
    converter_options: dict[str, Any] | None = None,
    quantizer_options: dict[str, Any] | None = None,
    user_options: dict[str, Any] | None = None,
    plugin_settings: dict[str, Any] | None = None,
) -> Plan:
    """Pick the steps; raise a one-line error that says why nothing fits.

    ``user_options`` (``-O KEY=VALUE``) must each be an option some step of the plan
    declares; every step's record may check and complete its options (``prepare``).
    """
    check_precision(ep, precision)
    via = None if via in (None, "auto") else via
    converter_options = converter_options or {}
    quantizer_options = quantizer_options or {}
    converters = registry.converters
    quantizers = registry.quantizers
    if (
        via
        and via not in converters
        and via not in quantizers
        and not any(
            via == registry.owner(h, n)
            for h, recs in (("slmk_converters", converters), ("slmk_quantizers", quantizers))
            for n in recs
        )
    ):
        known = sorted(set(converters) | set(quantizers))
        raise UsageError(f"unknown converter or quantizer {via!r}", hint=f"known: {', '.join(known) or 'none'}")

    if algorithm not in known_algorithms(registry):
        raise UsageError(
            f"unknown quantization algorithm {algorithm!r}",
            hint=f"the installed plugins run {', '.join(known_algorithms(registry))}",
        )
    # An algorithm no converter runs itself, or calibration data, needs a quantizer step.
    native = {a for conv in converters.values() for a in conv.algorithms} | {"default"}
    needs_quantizer = algorithm not in native or calibration
    blockers: list[str] = []

    def usable_converters(target: str, quantized_input: bool = False) -> list[tuple[str, Converter]]:
        out = []
        for name, conv in converters.items():
            if target not in conv.precisions or ep.name not in conv.execution_providers:
                continue
            if quantized_input and not conv.accepts_quantized_input:
                continue
            if conv.explicit_only and via != name:
                continue
            blocker = _converter_blocker(conv, info, registry.owner("slmk_converters", name))
            if blocker:
                blockers.append(f"{name}: {blocker}")
                continue
            out.append((name, conv))
        return sorted(out, key=lambda item: -item[1].priority)

    def quantizer_fits(q: Quantizer) -> bool:
        if precision not in q.precisions:
            return False
        if algorithm != "default" and q.algorithms and algorithm not in q.algorithms:
            return False
        if algorithm != "default" and not q.algorithms:
            return False
        return not calibration or q.uses_calibration

    plans: list[Plan] = []
    if not needs_quantizer:
        for name, conv in usable_converters(precision):
            if _matches(via, registry, "slmk_converters", name):
                plans.append(
                    Plan(
                        precision,
                        ep.name,
                        "direct",
                        (
                            PlannedStep(
                                "convert",
                                name,
                                registry.owner("slmk_converters", name),
                                precision,
                                conv.input_format,
                                conv.output_format,
                                dict(converter_options),
                            ),
                        ),
                        f"{name} reaches {precision} for {ep.name} in one step",
                    )
                )
    hf_quantizers = sorted(
        ((n, q) for n, q in quantizers.items() if q.stage == FORMAT_HF and quantizer_fits(q)),
        key=lambda item: -item[1].priority,
    )
    for qname, _quant in hf_quantizers:
        for cname, conv in usable_converters(precision, quantized_input=True):
            if _matches(via, registry, "slmk_quantizers", qname) or _matches(via, registry, "slmk_converters", cname):
                plans.append(
                    Plan(
                        precision,
                        ep.name,
                        "quantize-convert",
                        (
                            PlannedStep(
                                "quantize",
                                qname,
                                registry.owner("slmk_quantizers", qname),
                                precision,
                                FORMAT_HF,
                                FORMAT_HF,
                                dict(quantizer_options),
                            ),
                            PlannedStep(
                                "convert",
                                cname,
                                registry.owner("slmk_converters", cname),
                                precision,
                                FORMAT_HF,
                                conv.output_format,
                                dict(converter_options),
                            ),
                        ),
                        f"{qname} quantizes the weights to {precision}, {cname} builds the ONNX graph",
                    )
                )
    onnx_quantizers = sorted(
        ((n, q) for n, q in quantizers.items() if q.stage == FORMAT_ORTGENAI and quantizer_fits(q)),
        key=lambda item: -item[1].priority,
    )
    if precision != "fp32":
        for qname, _quant in onnx_quantizers:
            for cname, conv in usable_converters("fp32"):
                if _matches(via, registry, "slmk_quantizers", qname) or _matches(
                    via, registry, "slmk_converters", cname
                ):
                    plans.append(
                        Plan(
                            precision,
                            ep.name,
                            "convert-quantize",
                            (
                                PlannedStep(
                                    "convert",
                                    cname,
                                    registry.owner("slmk_converters", cname),
                                    "fp32",
                                    FORMAT_HF,
                                    FORMAT_ORTGENAI,
                                    _without_quantization(conv, converter_options),
                                ),
                                PlannedStep(
                                    "quantize",
                                    qname,
                                    registry.owner("slmk_quantizers", qname),
                                    precision,
                                    FORMAT_ORTGENAI,
                                    FORMAT_ORTGENAI,
                                    dict(quantizer_options),
                                ),
                            ),
                            f"{cname} builds fp32, {qname} quantizes the ONNX model to {precision}",
                        )
                    )
    if plans:
        return _prepared(registry, plans[0], user_options or {}, plugin_settings or {})
    if blockers:
        raise UsageError(
            f"no converter supports this model: {'; '.join(dict.fromkeys(blockers))}",
            hint="a converter plugin for this architecture would add it; `slmk plugins` lists converters",
        )
    wanted = f"{precision} on {ep.name}"
    if via:
        wanted += f" via {via}"
    if algorithm != "default":
        wanted += f" with algorithm {algorithm}"
    if calibration:
        wanted += " with calibration data"
    raise SlmkError(
        f"no installed plugin can build {wanted}",
        hint="`slmk plugins` lists converters and quantizers; install the extras they need (pip install 'slmk[all]')",
    )


def _prepared(registry: Registry, plan: Plan, user_options: dict[str, Any], plugin_settings: dict[str, Any]) -> Plan:
    """The plan with each step's options checked and completed by its record's ``prepare``."""
    records = [
        registry.converters[step.tool] if step.kind == "convert" else registry.quantizers[step.tool]
        for step in plan.steps
    ]
    declared = {name for record in records for name in record.options}
    unknown = sorted(set(user_options) - declared)
    if unknown:
        tools = ", ".join(step.tool for step in plan.steps)
        raise UsageError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for {tools}",
            hint=f"this plan takes {', '.join(sorted(declared)) or 'no options'}; `slmk plugins --json` lists each "
            "converter's and quantizer's options",
        )
    steps = []
    for step, record in zip(plan.steps, records, strict=True):
        table = {
            key.split(".", 1)[1]: value
            for key, value in plugin_settings.items()
            if key.split(".", 1)[0] == step.plugin and key.split(".", 1)[1] in record.options and value is not None
        }
        options = {**table, **step.options}
        if record.prepare is not None:
            options = dict(record.prepare(options))
        steps.append(replace(step, options=options))
    return replace(plan, steps=tuple(steps))
