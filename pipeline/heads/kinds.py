"""What each model output is: the output kind from its shape (and values), overridable by ``task``.

Rules for ``task: auto`` (the batch axis is found first, see :func:`batch_axis_from_probes`):

* ``[N, K]`` -> ``classify`` (logits or probabilities over K classes), except ``embedding`` when K == 1 (a score or
  regression value), when every row has unit L2 norm (a normalised embedding), or when the output's name says so
  (``emb``, ``feat``, ``desc``, ``vec`` in it);
* ``[N, C, H, W]`` -> ``dense`` (segmentation / detection probability or score maps; C may be 1);
* ``[T, N, K]`` (batch on axis 1) -> ``sequence`` (CTC logits, layout ``TNK``);
* ``[N, A, B]`` -> ``dense`` with the channel axis squeezed (layout ``NHW``) when ``A x B`` has the input's aspect
  ratio (an ``[N, H, W]`` text map), else ``sequence`` with layout ``NTK``;
* ``[N]`` or ``[N, ...]`` of any other rank -> ``embedding`` when forced; ``auto`` refuses ranks above 4.

Which axis is the batch: a model is probed at two batch sizes (1 and 2 is enough); the one axis whose size follows
the batch is it. With one probe only (a model with a fixed batch), the axis among the first two whose size equals the
batch is it, and an ambiguous shape (``T == N``) is refused with the fix named.

Value ranges decide thresholds and distillation: ``prob`` (all values in [0, 1]), ``logprob`` (all <= 0 and
normalised over the class axis, e.g. ``log_softmax``), else ``logit``.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence

import numpy as np

from pipeline.errors import ConfigError

KINDS = ("classify", "dense", "sequence", "embedding")
TASKS = ("auto",) + KINDS
VALUES = ("logit", "prob", "logprob")
_EMBED_NAME = re.compile(r"emb|feat|desc|vec", re.IGNORECASE)
# Relative aspect-ratio tolerance for "[N, A, B] is an [N, H, W] map": feature strides round sizes (e.g. 48x80 at
# stride 8 is 6x10; odd sizes lose a pixel per stride), a CTC output (T x classes) is nowhere near the input's ratio.
_ASPECT_TOL = 0.15


@dataclasses.dataclass(frozen=True)
class HeadSpec:
    """One output of a model, as the metrics and losses need it.

    Attributes:
        name: the output's name (ONNX output name, or ``output{i}``).
        kind: one of :data:`KINDS`.
        layout: how the axes read: ``NK`` (classify), ``NCHW`` / ``NHW`` (dense), ``NTK`` / ``TNK`` (sequence),
            ``ND`` (embedding: everything after the batch axis is flattened).
        values: ``logit``, ``prob`` or ``logprob`` (see the module docstring).
        num_classes: K for classify and sequence, C for dense, D for embedding.
        blank: the CTC blank index (sequence only).
    """

    name: str
    kind: str
    layout: str
    values: str = "logit"
    num_classes: int = 0
    blank: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (to store on the model card)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "HeadSpec":
        """Inverse of :meth:`as_dict`."""
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})

    @property
    def batch_axis(self) -> int:
        return 1 if self.layout == "TNK" else 0

    def canonical(self, a: Any) -> Any:
        """``a`` (numpy array or torch tensor) in the metrics' layout: NK, NCHW, NTK or ND."""
        if self.layout == "TNK":
            return a.transpose(0, 1) if hasattr(a, "permute") else np.swapaxes(a, 0, 1)
        if self.layout == "NHW":
            return a[:, None]
        if self.layout == "ND":
            return a.reshape(a.shape[0], -1)
        return a


def batch_axis_from_probes(shape_a: Sequence[int], n_a: int, shape_b: Sequence[int] | None = None,
                           n_b: int | None = None, name: str = "output") -> int:
    """The batch axis of an output probed at batch ``n_a`` (and ``n_b``, when the model takes two batch sizes).

    Raises:
        ConfigError: no axis follows the batch, or (one probe) the batch size appears on both leading axes.
    """
    shape_a = tuple(int(s) for s in shape_a)
    if shape_b is not None and n_b is not None and n_b != n_a:
        shape_b = tuple(int(s) for s in shape_b)
        if len(shape_a) != len(shape_b):
            raise ConfigError(f"{name}: rank changes with the batch size ({shape_a} vs {shape_b})")
        axes = [i for i, (p, q) in enumerate(zip(shape_a, shape_b)) if p != q]
        if len(axes) == 1 and shape_a[axes[0]] == n_a and shape_b[axes[0]] == n_b:
            return axes[0]
        raise ConfigError(f"{name}: no single axis follows the batch size ({shape_a} at batch {n_a}, {shape_b} at "
                          f"batch {n_b}); set `task` and check the model's outputs")
    lead = [i for i in range(min(2, len(shape_a))) if shape_a[i] == n_a]
    if len(lead) == 1:
        return lead[0]
    if not lead:
        raise ConfigError(f"{name}: no leading axis of {shape_a} equals the batch size {n_a}; "
                          "the output must carry the batch on axis 0 or 1")
    raise ConfigError(f"{name}: shape {shape_a} at batch {n_a} is ambiguous (batch size on axes 0 and 1); probe at "
                      "two batch sizes (the model's batch axis must be dynamic) or set `task`")


def value_range(a: np.ndarray, class_axis: int) -> str:
    """``prob``, ``logprob`` or ``logit`` from the values of one probe (see the module docstring)."""
    a = np.asarray(a, dtype=np.float64)
    if a.size == 0:
        return "logit"
    if a.min() >= 0.0 and a.max() <= 1.0:
        return "prob"
    if a.max() <= 0.0 and a.ndim > 1:
        lse = np.log(np.exp(a).sum(axis=class_axis))
        if np.allclose(lse, 0.0, atol=1e-3):
            return "logprob"
    return "logit"


def _aspect_matches(a: int, b: int, input_hw: Sequence[int] | None) -> bool:
    if not input_hw or a < 1 or b < 1:
        return False
    want = input_hw[0] / input_hw[1]
    return abs(a / b - want) <= _ASPECT_TOL * want


def _auto_kind(shape: tuple[int, ...], axis: int, name: str, sample: np.ndarray | None,
               input_hw: Sequence[int] | None) -> tuple[str, str]:
    """(kind, layout) of one output under ``task: auto``."""
    rank = len(shape)
    if rank == 3 and axis == 1:
        return "sequence", "TNK"
    if axis != 0:
        raise ConfigError(f"{name}: batch on axis {axis} of a rank-{rank} output {shape} is no known head; set `task`")
    if rank == 1:
        return "embedding", "ND"
    if rank == 2:
        unit = sample is not None and sample.size and np.allclose(np.linalg.norm(sample, axis=1), 1.0, atol=1e-3)
        if shape[1] == 1 or _EMBED_NAME.search(name) or unit:
            return "embedding", "ND"
        return "classify", "NK"
    if rank == 3:
        return ("dense", "NHW") if _aspect_matches(shape[1], shape[2], input_hw) else ("sequence", "NTK")
    if rank == 4:
        return "dense", "NCHW"
    raise ConfigError(f"{name}: rank-{rank} output {shape} is no known head (classify [N,K], dense [N,C,H,W], "
                      "sequence [N,T,K]/[T,N,K], embedding [N,D]); set `task: embedding` to compare it as a vector")


def _forced_layout(kind: str, shape: tuple[int, ...], axis: int, name: str,
                   input_hw: Sequence[int] | None) -> str:
    rank = len(shape)
    if kind == "embedding":
        if axis != 0:
            raise ConfigError(f"{name}: task embedding needs the batch on axis 0, got {shape}")
        return "ND"
    if kind == "classify" and rank == 2 and axis == 0:
        return "NK"
    if kind == "sequence" and rank == 3:
        return "TNK" if axis == 1 else "NTK"
    if kind == "dense" and axis == 0 and rank in (3, 4):
        return "NCHW" if rank == 4 else "NHW"
    need = {"classify": "[N, K]", "sequence": "[N, T, K] or [T, N, K]", "dense": "[N, C, H, W] or [N, H, W]"}[kind]
    raise ConfigError(f"{name}: task {kind} needs an output shaped {need}, the model gives {shape}; "
                      "use `task: auto` or the kind that output is")


def detect_heads(probe_a: Sequence[np.ndarray], n_a: int, probe_b: Sequence[np.ndarray] | None = None,
                 n_b: int | None = None, *, names: Sequence[str] | None = None, task: str | Sequence[str] = "auto",
                 input_hw: Sequence[int] | None = None, blank: int = 0) -> list[HeadSpec]:
    """One :class:`HeadSpec` per model output, from the outputs of one or two probes.

    Args:
        probe_a: the model's outputs at batch ``n_a`` (in output order).
        n_a: the probe's batch size.
        probe_b: the outputs at another batch size ``n_b`` (recommended: it decides the batch axis for sure).
        names: output names (default ``output0``, ``output1``, ...).
        task: ``auto`` or a kind for every output, or one entry per output (``auto`` entries are detected).
        input_hw: the model's input (H, W): tells an ``[N, H, W]`` map from ``[N, T, K]`` sequence logits.
        blank: the CTC blank index for sequence heads.

    Raises:
        ConfigError: an unknown task, a task that does not fit the output's shape, or a shape no kind fits.
    """
    n = len(probe_a)
    names = list(names) if names is not None else [f"output{i}" for i in range(n)]
    tasks = [task] * n if isinstance(task, str) else list(task)
    if len(tasks) != n or len(names) != n:
        raise ConfigError(f"task: {len(tasks)} entries and {len(names)} names for {n} model outputs; give one per output")
    for t in tasks:
        if t not in TASKS:
            raise ConfigError(f"task: unknown value {t!r}; choose one of {', '.join(TASKS)}")
    specs = []
    for i, (out, t, name) in enumerate(zip(probe_a, tasks, names)):
        out = np.asarray(out)
        other = np.asarray(probe_b[i]).shape if probe_b is not None else None
        axis = 0 if out.ndim == 1 else batch_axis_from_probes(out.shape, n_a, other, n_b, name)
        shape = tuple(int(s) for s in out.shape)
        if t == "auto":
            kind, layout = _auto_kind(shape, axis, name, out.reshape(shape[0], -1) if out.ndim == 2 else None, input_hw)
        else:
            kind, layout = t, _forced_layout(t, shape, axis, name, input_hw)
        spec = HeadSpec(name=name, kind=kind, layout=layout, blank=int(blank) if kind == "sequence" else 0)
        canon = spec.canonical(out)
        class_axis = {"classify": 1, "dense": 1, "sequence": 2, "embedding": 1}[kind]
        specs.append(dataclasses.replace(spec, values=value_range(canon, class_axis),
                                         num_classes=int(canon.shape[class_axis]) if canon.ndim > class_axis else 1))
    return specs
