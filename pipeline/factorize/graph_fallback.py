"""The graph path's ranks, chosen by measured output fidelity rather than an energy threshold alone.

A graph the torch importer cannot convert is never finetuned, so whatever its factorization breaks stays broken.
After the graph is planned at the configured ranks (:mod:`pipeline.factorize.graph_plan`), the whole factorized
graph and the original run through ONNX Runtime on check images (validation plus a few training images), and the
task's fidelity metric per output (:mod:`pipeline.heads.fidelity`: top-1 agreement, IoU of thresholded maps, CTC
step agreement, cosine, ...) must meet the fidelity gate's bounds at **half** the allowed loss
(:func:`half_loss_criteria`): the other half is left to int8 quantization, which the benchmark's gate
(:mod:`pipeline.fidelity_gate`) checks again on the shipped variant.

While the graph fails, the factorized layer with the largest *local* output error (its low-rank chain against the
dense Conv, both fed the original graph's activations; one ORT run for all layers) moves one step up the ladder
configured energy -> 0.9 -> 0.97 -> dense, the graph is rebuilt from the cached plans and checked again. While the
graph is far from the bound, the worst eighth of the factorized layers move together (a graph of 60 convs would
otherwise take a hundred full checks); near it, one layer per check. Each
fallen-back layer keeps the reason (its ladder and the failing check that moved it) in the per-layer table.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import helper

from pipeline.config import FactorizeConfig
from pipeline.errors import ConfigError
from pipeline.factorize.graph_plan import GraphPlanner, LayerPlan, dense_plan
from pipeline.factorize.onnx_graph import build_graph
from pipeline.factorize.plan import LayerReport
from pipeline.factorize.ranks import model_selector
from pipeline.heads.gate import LOWER_IS_BETTER, GateCriteria, Measurement, Verdict, check_variant
from pipeline.heads.kinds import KINDS, HeadSpec
from pipeline.heads.measure import onnx_outputs, output_entries
from pipeline.ort_session import make_session

__all__ = ["FallbackResult", "LADDER", "factorize_graph_checked", "half_loss_criteria", "ladder"]

#: energies a failing layer moves through after the configured selector, before it is kept dense
LADDER = (0.9, 0.97)
#: images of the local-error probe (ranking only needs an order, not a precise value)
PROBE_IMAGES = 8
_LOG = logging.getLogger(__name__)


def half_loss_criteria(max_drop: float, share: float = 0.5) -> GateCriteria:
    """The gate's bounds with only ``share`` of each allowed loss: ``max_drop`` (a fraction) halves, and every
    fixed floor moves half-way to a perfect score (IoU 0.90 -> 0.95; a ceiling such as ``mae`` halves)."""
    base = GateCriteria(max_drop=100.0 * float(max_drop))
    floors: dict[str, dict[str, float]] = {}
    for kind in KINDS:
        floors[kind] = {m: (b * share if m in LOWER_IS_BETTER else 1.0 - (1.0 - b) * share)
                        for m, b in base.bounds(kind).items()}
    return GateCriteria(max_drop=base.max_drop * share, floors=floors)


def ladder(cfg: FactorizeConfig) -> list[tuple[str, FactorizeConfig]]:
    """``(label, config)`` of each rank level a layer can move through: the configured selector, then the
    :data:`LADDER` energies above it (the layer is kept dense after the last)."""
    # a model-scope selector (search, budget) needs the torch model: the graph plans take energy ranks instead
    # (graph_plan says so per layer), so the ladder starts at the configured energy as it does for selector=energy
    energy = cfg.selector == "energy" or model_selector(cfg.selector) is not None
    label = f"energy {cfg.energy:g}" if energy else f"selector {cfg.selector}"
    out = [(label, cfg)]
    for e in LADDER:
        if not energy or e > cfg.energy:
            out.append((f"energy {e:g}", dataclasses.replace(cfg, selector="energy", energy=e)))
    return out


@dataclass
class FallbackResult:
    """What :func:`factorize_graph_checked` decided and measured."""

    model: Any
    rows: list[LayerReport]
    structure: dict[str, dict[str, Any]]
    fallbacks: dict[str, str]  # layer name -> its ladder, for each layer moved off the configured ranks
    passed: bool
    rounds: int
    images: int
    checks: list[dict[str, Any]] = field(default_factory=list)  # the final graph's checks
    initial: list[dict[str, Any]] = field(default_factory=list)  # the checks at the configured ranks

    def summary(self) -> dict[str, Any]:
        """The stage metrics' ``fidelity_check`` entry."""
        return {"passed": self.passed, "rounds": self.rounds, "images": self.images,
                "layers_fallen_back": len(self.fallbacks), "checks": self.checks, "initial_checks": self.initial}


def _checks(v: Verdict) -> list[dict[str, Any]]:
    return [{**dataclasses.asdict(c), "passed": c.passed} for c in v.checks]


class _Fidelity:
    """The original's outputs on the check images, once; any candidate graph checked against them."""

    def __init__(self, original: Any, heads: Sequence[HeadSpec], x: np.ndarray, criteria: GateCriteria) -> None:
        self.heads, self.x, self.criteria = list(heads), x, criteria
        self.ref = onnx_outputs(original.SerializeToString(), x, self.heads)
        self.orig = Measurement("original", "", 0, 0.0, outputs=output_entries(self.heads, self.ref))

    def check(self, model: Any) -> Verdict:
        outs = onnx_outputs(model.SerializeToString(), self.x, self.heads)
        entries = output_entries(self.heads, self.ref, outs)
        return check_variant(Measurement("factorized", "", 0, 0.0, outputs=entries), self.orig, self.criteria)


def _local_errors(planner: GraphPlanner, plans: Sequence[LayerPlan], x: np.ndarray) -> list[float]:
    """Relative output error ``||chain(a) - conv(a)|| / ||conv(a)||`` of each plan's chain against its dense Conv,
    both fed the original graph's activations ``a`` on ``x`` (one ORT run with every chain as a side branch)."""
    m = onnx.ModelProto()
    m.CopyFrom(planner.model)
    pairs: list[tuple[str, str]] = []
    for p in plans:
        y = p.conv.node.output[0]
        probe = planner.unique(f"{y}_lowrank_probe")
        for node in p.nodes:
            n = onnx.NodeProto()
            n.CopyFrom(node)
            n.output[:] = [probe if o == y else o for o in n.output]
            n.name = planner.unique(f"{node.name}_probe") if node.name else ""
            m.graph.node.append(n)
        m.graph.initializer.extend(p.inits)
        pairs.append((y, probe))
    known = {o.name for o in m.graph.output}
    for name in {v for pair in pairs for v in pair} - known:
        m.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sess = make_session(m.SerializeToString(), threads=1, opt_level="disabled")
    inp = sess.get_inputs()[0]
    fixed = inp.shape[0] if inp.shape and isinstance(inp.shape[0], int) and inp.shape[0] > 0 else 1
    num, den = np.zeros(len(pairs)), np.zeros(len(pairs))
    names = [v for pair in pairs for v in pair]
    for i in range(0, len(x), fixed):
        xb = x[i:i + fixed]
        if len(xb) < fixed:
            xb = np.concatenate([xb, np.repeat(xb[-1:], fixed - len(xb), axis=0)])
        outs = sess.run(names, {inp.name: np.ascontiguousarray(xb, np.float32)})
        for j in range(len(pairs)):
            a, b = outs[2 * j].astype(np.float64), outs[2 * j + 1].astype(np.float64)
            num[j] += float(((a - b) ** 2).sum())
            den[j] += float((a ** 2).sum())
    return [float(np.sqrt(n / d)) if d > 0 else float(np.sqrt(n)) for n, d in zip(num, den)]


def _moves(verdict: Verdict, live: int) -> int:
    """Layers to move this round: an eighth of the factorized ones while the graph is far from the bound (its
    worst check misses by more than three times the loss it may have), else one, so that near the bound each move
    is measured on its own and no layer goes up further than the graph needs."""
    w = verdict.worst
    if w is None or not np.isfinite(w.value):
        return 1
    allowed = (1.0 - w.bound) if w.op == ">=" else w.bound
    far = -w.margin > 3.0 * max(allowed, 1e-9)
    return max(1, live // 8) if far else 1


def _step_up(planner: GraphPlanner, old: LayerPlan, levels: list[tuple[str, FactorizeConfig]], level: list[int],
             i: int, steps: list[str]) -> LayerPlan:
    """Plan ``i`` one ladder level up, skipping levels that give the same ranks (alignment), or dense after the
    last; ``level`` and ``steps`` are updated."""
    while True:
        level[i] += 1
        if level[i] >= len(levels):
            steps.append("dense")
            return dense_plan(old, "")
        label, lcfg = levels[level[i]]
        steps.append(label)
        new = planner.plan(old.conv, lcfg)
        if not new.factorized or new.row.ranks != old.row.ranks:
            return new


def factorize_graph_checked(model: Any, cfg: FactorizeConfig, input_shape: tuple[int, int, int],
                            heads: Sequence[HeadSpec], check_images: np.ndarray, max_drop: float,
                            calib_images: np.ndarray | None = None,
                            log: logging.Logger | None = None) -> FallbackResult:
    """Factorize the graph's Conv nodes, then raise ranks where the whole graph's output fidelity needs it.

    Args:
        model: the graph (standard-domain operators; ORT must run it); not modified.
        cfg: the factorize config (its selector gives the starting ranks).
        input_shape: ``(C, H, W)`` of one sample.
        heads: the model's output heads (the card's), which choose the fidelity metric per output.
        check_images: inputs ``(N, C, H, W)`` float32 the fidelity is measured on (validation plus training images).
        max_drop: the benchmark's allowed loss (a fraction); the graph must meet half of it
            (:func:`half_loss_criteria`).
        calib_images: calibration inputs for ``cfg.objective=outputs``.
        log: where each fallback round is logged.

    Returns:
        The :class:`FallbackResult`; ``passed`` is False only when even the dense graph misses the bounds (the
        check images then cannot tell the graph from itself, e.g. a non-deterministic model).

    Raises:
        ConfigError: no check images.
        NumericalError / InputError: from the planner (NaN weights; ORT cannot run the graph).
    """
    log = log or _LOG
    if check_images is None or len(check_images) == 0:
        raise ConfigError("graph factorization: no images to check the factorized graph's fidelity on; the "
                          "dataset needs validation or training images")
    x = np.ascontiguousarray(check_images, dtype=np.float32)
    planner = GraphPlanner(model, cfg, input_shape, calib_images)
    levels = ladder(cfg)
    plans = planner.plan_all(levels[0][1])
    level = [0] * len(plans)
    moved: dict[int, list[str]] = {}  # plan index -> the levels it went through
    whys: dict[int, str] = {}  # plan index -> the failing check of its last move
    errors: dict[tuple[int, int], float] = {}
    fid = _Fidelity(planner.model, heads, x, half_loss_criteria(max_drop))
    verdict = fid.check(build_graph(planner.model, plans, check=False))
    initial, rounds = _checks(verdict), 1
    while not verdict.passed:
        live = [i for i, p in enumerate(plans) if p.factorized]
        if not live:
            break
        todo = [i for i in live if (i, level[i]) not in errors]
        if todo:
            for i, e in zip(todo, _local_errors(planner, [plans[i] for i in todo], x[:PROBE_IMAGES])):
                errors[(i, level[i])] = e
        why = verdict.worst.text() if verdict.worst else "fidelity check failed"
        ranked = sorted(live, key=lambda i: -errors[(i, level[i])])
        for worst in ranked[:_moves(verdict, len(live))]:
            err = errors[(worst, level[worst])]
            whys[worst] = why
            steps = moved.setdefault(worst, [levels[level[worst]][0]])
            old = plans[worst]
            plans[worst] = _step_up(planner, old, levels, level, worst, steps)
            log.info("graph fidelity check, round %d: %s; layer %s (local output error %.4f) -> %s", rounds, why,
                     old.conv.name, err, steps[-1])
        verdict = fid.check(build_graph(planner.model, plans, check=False))
        rounds += 1
    fallbacks: dict[str, str] = {}
    for i, steps in moved.items():
        p = plans[i]
        fallbacks[p.conv.name] = " -> ".join(steps)
        note = (f"fidelity fallback {' -> '.join(steps)}: with this layer at lower rank the whole graph missed "
                f"the check at half of benchmark.max_drop ({whys[i]})")
        p.row.reason = "; ".join(r for r in (p.row.reason, note) if r)
    final = build_graph(planner.model, plans)
    return FallbackResult(model=final, rows=[p.row for p in plans],
                          structure={p.conv.name: p.structure for p in plans if p.factorized}, fallbacks=fallbacks,
                          passed=verdict.passed, rounds=rounds, images=len(x), checks=_checks(verdict),
                          initial=initial)
