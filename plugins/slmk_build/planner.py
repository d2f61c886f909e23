"""Choose the steps that take a model to a precision on an execution provider.

Three shapes of plan, from what the installed plugins declare:
  direct:            convert (a converter that reaches the precision itself)
  quantize-convert:  quantize the HF weights, then convert them (e.g. Olive RTN/GPTQ + builder)
  convert-quantize:  convert at fp32, then quantize the ONNX model (e.g. MatMulNBits)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from slmk.api import (
    FORMAT_HF,
    FORMAT_ORTGENAI,
    Converter,
    ConvertRequest,
    ExecutionProvider,
    ModelInfo,
    Plan,
    PlannedStep,
    Quantizer,
    SlmkError,
    UsageError,
)
from slmk.api.operations import call_plugin, check_precision

if TYPE_CHECKING:
    from slmk.api.operations import Registry


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


@dataclass
class _Planning:
    """What every candidate plan is checked against; ``blockers`` collects why converters refused."""

    registry: Registry
    info: ModelInfo
    ep: ExecutionProvider
    precision: str
    via: str | None
    algorithm: str
    calibration: bool
    converter_options: dict[str, Any]
    quantizer_options: dict[str, Any]
    blockers: list[str] = field(default_factory=list)

    def matches(self, hook: str, record_name: str) -> bool:
        return self.via is None or self.via in (record_name, self.registry.owner(hook, record_name))

    def step(self, kind: str, tool: str, precision: str, formats: tuple[str, str], options: dict) -> PlannedStep:
        hook = "slmk_converters" if kind == "convert" else "slmk_quantizers"
        return PlannedStep(kind, tool, self.registry.owner(hook, tool), precision, *formats, dict(options))

    def usable_converters(self, target: str, quantized_input: bool = False) -> list[tuple[str, Converter]]:
        """Converters that reach ``target`` on the EP and accept the model, highest priority first."""
        out = []
        for name, conv in self.registry.converters.items():
            if target not in conv.precisions or self.ep.name not in conv.execution_providers:
                continue
            if quantized_input and not conv.accepts_quantized_input:
                continue
            if conv.explicit_only and self.via != name:
                continue
            blocker = _converter_blocker(conv, self.info, self.registry.owner("slmk_converters", name))
            if blocker:
                self.blockers.append(f"{name}: {blocker}")
                continue
            out.append((name, conv))
        return sorted(out, key=lambda item: -item[1].priority)

    def quantizers(self, stage: str) -> list[str]:
        """Quantizers working on ``stage`` that reach the precision with the algorithm (and calibration)."""

        def fits(q: Quantizer) -> bool:
            if q.stage != stage or self.precision not in q.precisions:
                return False
            if self.algorithm != "default" and self.algorithm not in q.algorithms:
                return False
            return not self.calibration or q.uses_calibration

        found = [(n, q) for n, q in self.registry.quantizers.items() if fits(q)]
        return [name for name, _ in sorted(found, key=lambda item: -item[1].priority)]


def _converter_blocker(converter: Converter, info: ModelInfo, plugin: str) -> str | None:
    if not converter.supports:
        return None
    return call_plugin(plugin, f"converter {converter.name!r} checking the model", converter.supports, info)


def make_plan(registry: Registry, info: ModelInfo, ep: ExecutionProvider, request: ConvertRequest) -> Plan:
    """Pick the steps for ``request`` (its precision, via, quantization, calibration and options);
    raise a one-line error that says why nothing fits.

    ``request.options`` (``-O KEY=VALUE``) must each be an option some step of the plan
    declares; every step's record may check and complete its options (``prepare``).
    """
    check_precision(ep, request.precision)
    planning = _planning(registry, info, ep, request)
    plans = [*_direct_plans(planning), *_quantize_convert_plans(planning), *_convert_quantize_plans(planning)]
    if plans:
        return _prepared(registry, plans[0], dict(request.options), dict(request.plugin_settings or {}))
    raise _nothing_fits(planning)


def _planning(registry: Registry, info: ModelInfo, ep: ExecutionProvider, request: ConvertRequest) -> _Planning:
    """Check ``via`` and the algorithm, and split the request's options between converters and quantizers."""
    via = None if request.via in (None, "auto") else request.via
    converters, quantizers = registry.converters, registry.quantizers
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
    quantization = dict(request.quantization)
    algorithm = quantization.pop("algorithm", "default") or "default"
    quantization.pop("calibration", None)  # the request's own calibration field says it
    if algorithm not in known_algorithms(registry):
        raise UsageError(
            f"unknown quantization algorithm {algorithm!r}",
            hint=f"the installed plugins run {', '.join(known_algorithms(registry))}",
        )
    options = {**quantization, **request.options}
    return _Planning(
        registry,
        info,
        ep,
        request.precision,
        via,
        algorithm,
        request.calibration is not None,
        # a converter that runs the algorithm itself (the builder's rtn, k_quant) needs its name too
        converter_options={**options, "algorithm": algorithm} if algorithm != "default" else options,
        quantizer_options={"algorithm": algorithm, **options},
    )


def _direct_plans(p: _Planning) -> list[Plan]:
    """One converter that reaches the precision itself, unless the algorithm or calibration needs a quantizer."""
    native = {a for conv in p.registry.converters.values() for a in conv.algorithms} | {"default"}
    if p.algorithm not in native or p.calibration:
        return []
    return [
        Plan(
            p.precision,
            p.ep.name,
            "direct",
            (p.step("convert", name, p.precision, (conv.input_format, conv.output_format), p.converter_options),),
            f"{name} reaches {p.precision} for {p.ep.name} in one step",
        )
        for name, conv in p.usable_converters(p.precision)
        if p.matches("slmk_converters", name)
    ]


def _quantize_convert_plans(p: _Planning) -> list[Plan]:
    """A quantizer on the Hugging Face weights, then a converter that takes quantized weights."""
    return [
        Plan(
            p.precision,
            p.ep.name,
            "quantize-convert",
            (
                p.step("quantize", qname, p.precision, (FORMAT_HF, FORMAT_HF), p.quantizer_options),
                p.step("convert", cname, p.precision, (FORMAT_HF, conv.output_format), p.converter_options),
            ),
            f"{qname} quantizes the weights to {p.precision}, {cname} builds the ONNX graph",
        )
        for qname in p.quantizers(FORMAT_HF)
        for cname, conv in p.usable_converters(p.precision, quantized_input=True)
        if p.matches("slmk_quantizers", qname) or p.matches("slmk_converters", cname)
    ]


def _convert_quantize_plans(p: _Planning) -> list[Plan]:
    """An fp32 conversion, then a quantizer on the ONNX model."""
    if p.precision == "fp32":
        return []
    return [
        Plan(
            p.precision,
            p.ep.name,
            "convert-quantize",
            (
                p.step(
                    "convert",
                    cname,
                    "fp32",
                    (FORMAT_HF, FORMAT_ORTGENAI),
                    _without_quantization(conv, p.converter_options),
                ),
                p.step("quantize", qname, p.precision, (FORMAT_ORTGENAI, FORMAT_ORTGENAI), p.quantizer_options),
            ),
            f"{cname} builds fp32, {qname} quantizes the ONNX model to {p.precision}",
        )
        for qname in p.quantizers(FORMAT_ORTGENAI)
        for cname, conv in p.usable_converters("fp32")
        if p.matches("slmk_quantizers", qname) or p.matches("slmk_converters", cname)
    ]


def _nothing_fits(p: _Planning) -> SlmkError:
    """The one-line error when no plan fits: the converters' own reasons, else what was asked for."""
    if p.blockers:
        return UsageError(
            f"no converter supports this model: {'; '.join(dict.fromkeys(p.blockers))}",
            hint="a converter plugin for this architecture would add it; `slmk plugins` lists converters",
        )
    wanted = f"{p.precision} on {p.ep.name}"
    if p.via:
        wanted += f" via {p.via}"
    if p.algorithm != "default":
        wanted += f" with algorithm {p.algorithm}"
    if p.calibration:
        wanted += " with calibration data"
    return SlmkError(
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
