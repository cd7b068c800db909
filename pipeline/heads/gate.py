"""The fidelity gate: which candidate variants may ship, and per target the one that does.

Criterion per output (a variant passes when every output passes; the headline names the worst check):

* the output has labels (``accuracy`` measured for the original and the variant): the accuracy drop must be at most
  ``max_drop`` points (``100 * (original - variant)``; the kind's accuracy: top-1, mIoU, exact sequence);
* otherwise the kind's fidelity floors against the original. Defaults (``max_drop`` = 1 point):

  ==========  ==============================================================
  classify    top-1 ``agreement`` >= 1 - max_drop/100            (0.99)
  dense       ``iou`` of the thresholded maps >= 0.90
  sequence    ``step_agreement`` >= 1 - max_drop/100 (0.99), ``exact`` >= 0.90
  embedding   ``cosine`` >= 0.99
  ==========  ==============================================================

  ``GateCriteria.floors`` overrides or adds bounds per kind; ``mae`` and ``rel_l2`` (lower is better) are ceilings.

What ships, per target: the fastest passing variant by p50 (ties: the smaller file), so a decomposed fp32 model ships
where int8 is slower there. The speed claim comes from the p50 ratio's bootstrap interval
(:mod:`pipeline.heads.latency_stats`): "faster" only when the whole interval is above 1, "slower" when it is below 1,
"no measurable speed change" otherwise. When no variant passes on a target, :class:`FidelityGateError` names every
variant's failing check, and the run must exit non-zero.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

from pipeline.errors import ValidationError
from pipeline.heads.latency_stats import RatioCI, median_ratio_ci

DEFAULT_MAX_DROP = 1.0
#: fixed floors (the max_drop-derived ones are added in GateCriteria.bounds)
DEFAULT_FLOORS: dict[str, dict[str, float]] = {"dense": {"iou": 0.90}, "sequence": {"exact": 0.90},
                                              "embedding": {"cosine": 0.99}}
LOWER_IS_BETTER = frozenset({"mae", "rel_l2"})
_METRIC_TEXT = {"agreement": "top-1 agreement", "iou": "IoU", "mae": "mean abs error", "step_agreement":
                "non-blank step agreement", "exact": "exact-sequence rate", "cosine": "cosine", "rel_l2": "relative L2",
                "accuracy_drop": "accuracy drop"}


class FidelityGateError(ValidationError):
    """No candidate variant meets the fidelity gate on a target: nothing may ship (the run exits non-zero).

    ``verdicts`` holds every candidate's checks (JSON-ready, as in :meth:`GateResult.as_dict`), for the refusal
    record the runner writes next to ``deploy/``.
    """

    def __init__(self, message: str, verdicts: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(message)
        self.verdicts = [dict(v) for v in verdicts]


@dataclasses.dataclass(frozen=True)
class GateCriteria:
    """``max_drop`` in accuracy points (also the source of the agreement floors) and per-kind bound overrides."""

    max_drop: float = DEFAULT_MAX_DROP
    floors: Mapping[str, Mapping[str, float]] = dataclasses.field(default_factory=dict)
    confidence: float = 0.95
    block: int = 1  # the timing loop's chunk (consecutive samples resampled together)

    def bounds(self, kind: str) -> dict[str, float]:
        """The fidelity bounds of ``kind`` (floors, or ceilings for :data:`LOWER_IS_BETTER` metrics)."""
        derived = 1.0 - self.max_drop / 100.0
        base = {"classify": {"agreement": derived}, "sequence": {"step_agreement": derived}}.get(kind, {})
        return {**base, **DEFAULT_FLOORS.get(kind, {}), **dict(self.floors.get(kind, {}))}


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One variant (or the original) as measured on one target.

    Attributes:
        name: the variant's name (``int8``, ``finetuned``, ...).
        file: the file that would ship.
        size_bytes: that file's size.
        p50_ms: median latency on ``target``.
        outputs: per model output, in order: :func:`~pipeline.heads.fidelity.head_fidelity`'s dict against the
            original, plus ``accuracy`` (the kind's headline accuracy, or None) when the data has labels. The
            original's own entries need only ``name``, ``kind`` and ``accuracy``.
        target: the benchmark target the latency is from.
        samples_ms: the raw interleaved latency samples (for the ratio's interval; empty: no spread claimed).
        label: how the headline names it (e.g. ``int8``, ``fp32 decomposed``); default the name.
    """

    name: str
    file: str
    size_bytes: int
    p50_ms: float
    outputs: Sequence[Mapping[str, Any]] = ()
    target: str = "cpu"
    samples_ms: Sequence[float] = ()
    label: str = ""


@dataclasses.dataclass(frozen=True)
class Check:
    """One bound on one output: ``value`` against ``bound`` (``op`` is ``>=`` or ``<=``)."""

    output: str
    metric: str
    value: float
    op: str
    bound: float

    @property
    def passed(self) -> bool:
        if not math.isfinite(self.value):
            return False
        return self.value >= self.bound if self.op == ">=" else self.value <= self.bound

    @property
    def margin(self) -> float:
        """How far inside the bound (negative: outside); -inf for an unmeasured value."""
        if not math.isfinite(self.value):
            return -math.inf
        return self.value - self.bound if self.op == ">=" else self.bound - self.value

    def text(self) -> str:
        if self.metric == "accuracy_drop":
            return f"{self.output} accuracy drop {100 * self.value:.2f} points (gate {self.op} {100 * self.bound:g})"
        return f"{self.output} {_METRIC_TEXT.get(self.metric, self.metric)} {self.value:.4f} (gate {self.op} {self.bound:g})"


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A candidate's gate result on one target."""

    name: str
    target: str
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def worst(self) -> Check | None:
        return min(self.checks, key=lambda c: c.margin) if self.checks else None

    def reason(self) -> str:
        failed = [c.text() for c in self.checks if not c.passed]
        return "; ".join(failed) if failed else "passes"


@dataclasses.dataclass(frozen=True)
class Shipment:
    """What ships on one target and how it compares with the original there."""

    target: str
    variant: str
    label: str
    file: str
    smaller: float
    speed_ratio: float
    speed: RatioCI | None
    worst: Check | None
    also_passed: tuple[tuple[str, float], ...]
    refused: tuple[tuple[str, str], ...]

    @property
    def speed_verdict(self) -> str:
        """``faster`` / ``slower`` / ``same`` from the interval; ``unmeasured`` without samples."""
        return self.speed.verdict if self.speed is not None else "unmeasured"


@dataclasses.dataclass(frozen=True)
class GateResult:
    verdicts: tuple[Verdict, ...]
    shipped: dict[str, Shipment]
    headline: dict[str, str]

    @property
    def passing(self) -> dict[str, list[str]]:
        """``{target: [names of the variants that pass]}``."""
        out: dict[str, list[str]] = {}
        for v in self.verdicts:
            out.setdefault(v.target, [])
            if v.passed:
                out[v.target].append(v.name)
        return out

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for the report."""
        check = _check_dict
        return {
            "verdicts": [_verdict_dict(v) for v in self.verdicts],
            "shipped": {t: {"variant": s.variant, "label": s.label, "file": s.file, "smaller": s.smaller,
                            "speed_ratio": s.speed_ratio, "speed_verdict": s.speed_verdict,
                            "speed_ci": s.speed.as_dict() if s.speed else None, "worst": check(s.worst),
                            "also_passed": [list(a) for a in s.also_passed], "refused": [list(r) for r in s.refused]}
                        for t, s in self.shipped.items()},
            "headline": dict(self.headline),
        }


def _check_dict(c: Check | None) -> dict[str, Any] | None:
    return None if c is None else {**dataclasses.asdict(c), "passed": c.passed}


def _verdict_dict(v: Verdict) -> dict[str, Any]:
    return {"name": v.name, "target": v.target, "passed": v.passed, "reason": v.reason(),
            "checks": [_check_dict(c) for c in v.checks]}


def _value(d: Mapping[str, Any], key: str) -> float:
    v = d.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def check_variant(variant: Measurement, original: Measurement, criteria: GateCriteria) -> Verdict:
    """Every bound on every output of ``variant`` (labelled outputs: the accuracy drop; else the kind's floors)."""
    checks: list[Check] = []
    if len(variant.outputs) != len(original.outputs):
        checks.append(Check("outputs", "count", float(len(variant.outputs)), ">=", float(len(original.outputs))))
    for i, orig_out in enumerate(original.outputs):
        out = variant.outputs[i] if i < len(variant.outputs) else {}
        name, kind = str(orig_out.get("name", f"output{i}")), str(orig_out.get("kind", out.get("kind", "")))
        if orig_out.get("accuracy") is not None:
            drop = _value(orig_out, "accuracy") - _value(out, "accuracy")
            checks.append(Check(name, "accuracy_drop", drop, "<=", criteria.max_drop / 100.0))
            continue
        bounds = criteria.bounds(kind)
        if not bounds:
            checks.append(Check(name, f"unknown kind {kind!r}", math.nan, ">=", 0.0))
        for metric, bound in bounds.items():
            op = "<=" if metric in LOWER_IS_BETTER else ">="
            checks.append(Check(name, metric, _value(out, metric), op, float(bound)))
    return Verdict(variant.name, variant.target, tuple(checks))


def _speed_text(s: Shipment) -> str:
    ci = s.speed
    if ci is None:
        word = "slower" if s.speed_ratio < 1.0 else "no spread measured, speed not claimed"
        return f"p50 ratio {s.speed_ratio:.2f}x ({word})"
    if ci.verdict == "faster":
        return f"{ci.ratio:.2f}x faster (p50, {ci.confidence:.0%} CI {ci.lo:.2f}-{ci.hi:.2f}, {ci.n_variant} interleaved samples)"
    if ci.verdict == "slower":
        return (f"slower: {ci.ratio:.2f}x the original's speed (p50, {ci.confidence:.0%} CI {ci.lo:.2f}-{ci.hi:.2f}, "
                f"{ci.n_variant} interleaved samples)")
    return (f"no measurable speed change (p50 ratio {ci.ratio:.2f}x, {ci.confidence:.0%} CI {ci.lo:.2f}-{ci.hi:.2f}, "
            f"{ci.n_variant} interleaved samples)")


def headline_text(s: Shipment) -> str:
    """One line naming what ships on the target, its size and speed against the original, and its worst check."""
    parts = [f"{s.target}: ships {s.label} ({s.file}): {s.smaller:.2f}x smaller, {_speed_text(s)}"]
    if s.worst is not None:
        parts.append(f"worst fidelity check: {s.worst.text()}")
    for name, ratio in s.also_passed:
        if ratio < s.speed_ratio:
            parts.append(f"{name} also meets the gate but is slower here ({ratio:.2f}x the original's speed), not shipped")
    for name, reason in s.refused:
        parts.append(f"{name} refused by the gate: {reason}")
    return "; ".join(parts)


def gate_variants(original: Measurement | Sequence[Measurement], variants: Sequence[Measurement],
                  criteria: GateCriteria = GateCriteria()) -> GateResult:
    """Gate every candidate and choose, per target, the fastest passing one to ship.

    Args:
        original: the original model's measurement, one per target (its ``outputs`` carry the labelled accuracy).
        variants: the candidates, each measured on one of those targets.
        criteria: ``max_drop`` and bound overrides.

    Raises:
        FidelityGateError: a target where no candidate passes (every candidate's failing checks named).
    """
    originals = [original] if isinstance(original, Measurement) else list(original)
    verdicts: list[Verdict] = []
    shipped: dict[str, Shipment] = {}
    failures: list[str] = []
    for orig in originals:
        cands = [v for v in variants if v.target == orig.target]
        vs = [check_variant(v, orig, criteria) for v in cands]
        verdicts.extend(vs)
        ok = [c for c, v in zip(cands, vs) if v.passed]
        if not ok:
            why = "; ".join(f"{v.name}: {v.reason()}" for v in vs) or "no candidate variants measured"
            failures.append(f"target {orig.target}: {why}")
            continue
        ship = min(ok, key=lambda c: (c.p50_ms, c.size_bytes))
        speed = None
        if len(orig.samples_ms) >= 2 and len(ship.samples_ms) >= 2:
            speed = median_ratio_ci(orig.samples_ms, ship.samples_ms, criteria.confidence, block=criteria.block)
        verdict = vs[cands.index(ship)]
        shipped[orig.target] = Shipment(
            target=orig.target, variant=ship.name, label=ship.label or ship.name, file=ship.file,
            smaller=orig.size_bytes / ship.size_bytes if ship.size_bytes else math.inf,
            speed_ratio=speed.ratio if speed else orig.p50_ms / ship.p50_ms, speed=speed, worst=verdict.worst,
            also_passed=tuple((c.name, orig.p50_ms / c.p50_ms) for c in ok if c is not ship),
            refused=tuple((v.name, v.reason()) for v in vs if not v.passed))
    if failures:
        raise FidelityGateError(
            f"fidelity gate (max_drop {criteria.max_drop:g} points): no variant meets it, nothing ships -- "
            + " | ".join(failures) + ". Fix: keep more rank (higher factorize energy or fewer layers), finetune "
            "longer, exclude the int8-sensitive nodes, or accept a larger drop with a higher max_drop",
            verdicts=[_verdict_dict(v) for v in verdicts])
    return GateResult(tuple(verdicts), shipped, {t: headline_text(s) for t, s in shipped.items()})
