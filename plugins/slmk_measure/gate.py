"""Quality gates: ``"ppl<=+5%,accuracy>=0.9"``.

Grammar: comma-separated terms ``METRIC OP VALUE``:

* ``ppl<=12.5`` perplexity on held-out text at most 12.5 (lower is better: only ``<=``);
* ``ppl<=+5%`` at most 5 % above the reference's (the source model run by transformers;
  with ``--reference fp32`` the fp32 build);
* ``accuracy>=0.9`` domain accuracy on the eval file, a fraction in [0, 1];
* ``agreement>=0.8`` greedy-token agreement with the reference, in [0, 1];
* ``decode_tps>=50`` decode tokens per second.

A signed percentage (``+5%``, ``-10%``) is relative to the reference; a
plain number is absolute. Higher-is-better metrics take ``>=``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from slmk.api import UsageError

GRAMMAR = (
    "comma-separated METRIC OP VALUE terms: ppl<=12.5, ppl<=+5% (relative to the reference), accuracy>=0.9, "
    "agreement>=0.8, decode_tps>=50"
)

#: metric -> the operator that makes sense for it
METRICS = {"ppl": "<=", "accuracy": ">=", "agreement": ">=", "decode_tps": ">="}
_FRACTIONS = ("accuracy", "agreement")
_TERM = re.compile(r"^\s*([a-z_]+)\s*(<=|>=|=<|=>|<|>|==|=)\s*([+-]?)\s*([0-9]*\.?[0-9]+)\s*(%?)\s*$")


@dataclass(frozen=True)
class Term:
    metric: str
    op: str
    value: float
    relative: bool  # value is a percentage of the reference's measurement

    def __str__(self) -> str:
        if self.relative:
            return f"{self.metric}{self.op}{self.value:+g}%"
        return f"{self.metric}{self.op}{self.value:g}"

    @property
    def needs_reference(self) -> bool:
        return self.relative or self.metric == "agreement"

    def threshold(self, reference: float | None) -> float | None:
        if not self.relative:
            return self.value
        return None if reference is None else reference * (1 + self.value / 100)

    def check(self, measured: float | None, reference: float | None = None) -> tuple[bool, str]:
        """(passes, why) for a measured value; ``reference`` is the reference precision's value."""
        limit = self.threshold(reference)
        if measured is None:
            return False, f"{self.metric} not measured"
        if limit is None:
            return False, f"{self.metric} of the reference not measured"
        ok = measured <= limit if self.op == "<=" else measured >= limit
        relation = ("<=" if ok else ">") if self.op == "<=" else (">=" if ok else "<")
        where = f" (reference {reference:.4g} {self.value:+g}%)" if self.relative else ""
        return ok, f"{self.metric} {measured:.4g} {relation} {limit:.4g}{where}"


@dataclass(frozen=True)
class Gate:
    terms: tuple[Term, ...]

    def __str__(self) -> str:
        return ",".join(str(t) for t in self.terms)

    @property
    def metrics(self) -> set[str]:
        return {t.metric for t in self.terms}

    @property
    def needs_reference(self) -> bool:
        return any(t.needs_reference for t in self.terms)

    def check(self, measured, reference=None) -> tuple[bool, list[str]]:
        """(all pass, one reason per term) for Measurement-like objects (``.metric(name)``)."""
        ok, reasons = True, []
        for term in self.terms:
            passed, why = term.check(
                measured.metric(term.metric), reference.metric(term.metric) if reference is not None else None
            )
            ok &= passed
            reasons.append(("ok: " if passed else "FAIL: ") + why)
        return ok, reasons


def parse_gate(text: str) -> Gate:
    """Parse a gate; a bad term raises UsageError naming it and the grammar."""
    if not text or not text.strip():
        raise UsageError("the quality gate is empty", hint=GRAMMAR)
    terms = []
    for raw in text.split(","):
        if not raw.strip():
            raise UsageError(f"empty term in quality gate {text!r}", hint=GRAMMAR)
        terms.append(_parse_term(raw.strip()))
    return Gate(tuple(terms))


def _parse_term(raw: str) -> Term:
    match = _TERM.match(raw)
    if not match:
        raise UsageError(f"cannot read quality-gate term {raw!r}", hint=GRAMMAR)
    metric, op, sign, number, percent = match.groups()
    op = {"=<": "<=", "=>": ">="}.get(op, op)
    if metric not in METRICS:
        raise UsageError(
            f"unknown metric {metric!r} in quality-gate term {raw!r}", hint=f"metrics: {', '.join(METRICS)}; {GRAMMAR}"
        )
    if op != METRICS[metric]:
        better = "lower" if METRICS[metric] == "<=" else "higher"
        raise UsageError(
            f"quality-gate term {raw!r}: {metric} is {better}-is-better, write {metric}{METRICS[metric]}VALUE",
            hint=GRAMMAR,
        )
    value = float(number)
    if percent and not sign:
        raise UsageError(
            f"quality-gate term {raw!r}: a percentage is relative to the reference and carries a sign (+5% or -5%)",
            hint=GRAMMAR,
        )
    if sign and not percent:
        raise UsageError(
            f"quality-gate term {raw!r}: a signed value is relative and needs % (e.g. {sign}{number}%)", hint=GRAMMAR
        )
    if percent:
        return Term(metric, op, -value if sign == "-" else value, relative=True)
    if metric in _FRACTIONS and not 0 <= value <= 1:
        raise UsageError(f"quality-gate term {raw!r}: {metric} is a fraction between 0 and 1", hint=GRAMMAR)
    if metric in ("ppl", "decode_tps") and value <= 0:
        raise UsageError(f"quality-gate term {raw!r}: {metric} must be positive", hint=GRAMMAR)
    return Term(metric, op, value, relative=False)
