"""``svd_training``: Yang et al. 2020, singular-vector orthogonality + singular-value sparsification.

Each target layer of the dense *teacher* is decomposed once, at full rank, into ``U diag(|s|) V`` (never re-SVD'd
during training) and ``U``, ``s``, ``V`` are trained as parameters:

* channel form: ``W`` matricised as ``n x (c k k)``; deployed as kxk conv (c->r) with weight ``diag(sqrt|s|) V``
  then 1x1 conv (r->n) with weight ``U diag(sqrt|s|)``.
* spatial form: ``W`` matricised as ``(c k) x (n k)`` with ``M[(i,h),(o,w)] = W[o,i,h,w]``; deployed as kx1 conv
  (c->r, stride (s,1)) then 1xk conv (r->n, stride (1,s)).
* ``nn.Linear`` layers the structure factorizes (``linear_svd``) are handled the same way (``W`` is ``out x in``).

Loss: ``(1 - alpha) CE + alpha KD + lambda_o sum [L_o(U) + L_o(V)] + lambda_s sum R(s)``. The KD term from the
teacher is an addition to the paper's plain CE (it only helps when recovering a trained model); set
``finetune.alpha = 0`` for the paper's loss exactly.

Schedule ``phase_epochs = (a, b, c)``: ``a`` epochs with orthogonality only, ``b`` with sparsity added, then
energy-threshold pruning (drop the smallest values whose squared sum is ``<= prune_energy * total``; with
``prune_macs`` set, also cap each layer's rank so its MACs stay within that fraction of dense), ranks
aligned *up* to a multiple of ``align`` (never beyond full rank), and ``c`` epochs of finetuning with
``lambda_s = 0``. Adam at ``svd.lr``; each of the two training runs (``a + b`` and ``c``) uses the paper's step
schedule, LR x0.1 at 50% and 75% of the run (81/164 and 122/164 epochs on CIFAR). ``cfg.epochs`` is not used.

A layer whose final rank does not save MACs (channel: ``r (c k^2 + n) >= n c k^2``) reverts to a dense conv (full
reconstruction; no truncation since it would cost accuracy for nothing) and leaves the structure.
"""
from __future__ import annotations

import copy
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.errors import ConfigError
from pipeline.factorize.formats import CONV_FORMATS, FORMATS
from pipeline.factorize.formats.base import MatrixFormat
from pipeline.finetune.job import FINETUNE_METHODS, FinetuneJob, FinetuneResult
from pipeline.finetune.methods.common import distill_loss_fn, get_module, set_module
from pipeline.finetune.regularizers import SPARSITY, aligned_rank, energy_keep_mask, orthogonality
from pipeline.finetune.trainer import (
    dist_info,
    evaluate,
    freeze,
    make_optimizer,
    seed_everything,
    sharded_loader,
    train_epochs,
)

# The factorize format of each form: its matricisation, inverse and factor layout are the ones trained here.
FORM_FORMATS = {"channel": "channel_svd", "spatial": "spatial_svd", "linear": "linear_svd"}


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class SVDConv(nn.Module):
    """A conv (or linear) layer trained in SVD form ``U diag(|s|) V`` with ``U``, ``s``, ``V`` as parameters.

    The forward pass composes the dense kernel and runs one convolution: mathematically the same function as the
    two-conv chain, and cheaper at the high ranks of early training. :meth:`to_sequential` produces the deployable
    chain of plain ``nn.Conv2d``/``nn.Linear`` modules.

    Args:
        layer: the dense ``nn.Conv2d`` (groups 1, zero padding given as numbers) or ``nn.Linear``.
        form: ``"channel"`` or ``"spatial"`` (ignored for linear layers).
    """

    def __init__(self, layer: nn.Module, form: str) -> None:
        super().__init__()
        if form not in ("channel", "spatial"):
            raise ConfigError(f"finetune.svd.form must be 'channel' or 'spatial', got {form!r}")
        w = layer.weight.detach()
        self.is_linear = isinstance(layer, nn.Linear)
        self.form = "linear" if self.is_linear else form
        if self.is_linear:
            self.out_features, self.in_features = w.shape
        else:
            assert isinstance(layer, nn.Conv2d)
            self.n, self.c, self.kh, self.kw = w.shape
            self.stride = _pair(layer.stride)
            self.padding = _pair(layer.padding)
            self.dilation = _pair(layer.dilation)
        self.shape = tuple(w.shape)
        mat = self.fmt.matrix(w)
        # float64 SVD: the factors must reproduce the dense layer to float32 precision at full rank.
        u, s, vh = torch.linalg.svd(mat.to(torch.float64), full_matrices=False)
        dt = w.dtype
        self.u = nn.Parameter(u.to(dt).contiguous())
        self.s = nn.Parameter(s.to(dt).contiguous())
        self.v = nn.Parameter(vh.to(dt).contiguous())
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())
        self.full_rank = int(s.numel())

    @property
    def fmt(self) -> MatrixFormat:
        """The factorize format of this form (matricisation, its inverse, the deployed factor layout)."""
        fmt = FORMATS.get(FORM_FORMATS[self.form])
        assert isinstance(fmt, MatrixFormat)
        return fmt

    @property
    def rank(self) -> int:
        """Current number of singular values."""
        return int(self.s.numel())

    def matrix(self) -> Tensor:
        """``U diag(|s|) V``: the matricised weight."""
        return (self.u * self.s.abs()) @ self.v

    def dense_weight(self) -> Tensor:
        """The dense kernel (conv: ``(n, c, kh, kw)``; linear: ``(out, in)``)."""
        return self.fmt.fold(self.matrix(), self.shape)

    def forward(self, x: Tensor) -> Tensor:
        w = self.dense_weight()
        if self.is_linear:
            return F.linear(x, w, self.bias)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation)

    def orthogonality(self) -> Tensor:
        """``L_o(U) + L_o(V)``."""
        return orthogonality(self.u) + orthogonality(self.v)

    @torch.no_grad()
    def prune(self, keep: Tensor) -> None:
        """Physically remove the singular triplets where ``keep`` is False."""
        idx = torch.nonzero(keep, as_tuple=False).flatten()
        self.u = nn.Parameter(self.u[:, idx].contiguous())
        self.s = nn.Parameter(self.s[idx].contiguous())
        self.v = nn.Parameter(self.v[idx, :].contiguous())

    def macs_per_pixel(self, rank: int | None = None) -> tuple[int, int]:
        """``(factorized, dense)`` MACs per output pixel (per sample for linear) at ``rank`` (default current)."""
        r = self.rank if rank is None else rank
        if self.is_linear:
            return r * (self.in_features + self.out_features), self.in_features * self.out_features
        dense = self.n * self.c * self.kh * self.kw
        if self.form == "channel":
            return r * (self.c * self.kh * self.kw + self.n), dense
        # The kx1 conv is not strided along the width, so it produces ~stride_w times more columns.
        return r * (self.c * self.kh * self.stride[1] + self.n * self.kw), dense

    @torch.no_grad()
    def to_dense(self) -> nn.Module:
        """A plain ``nn.Conv2d``/``nn.Linear`` holding the reconstructed weight."""
        w = self.dense_weight().detach().clone()
        if self.is_linear:
            m: nn.Module = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        else:
            m = nn.Conv2d(self.c, self.n, (self.kh, self.kw), self.stride, self.padding, self.dilation,
                          bias=self.bias is not None)
        m.weight.copy_(w)
        if self.bias is not None:
            m.bias.copy_(self.bias.detach())
        return m.to(w.device)

    @torch.no_grad()
    def to_sequential(self) -> nn.Sequential:
        """Deployable two-layer chain with ``sqrt|s|`` folded into both factors (bias on the second layer)."""
        sq = self.s.detach().abs().sqrt()
        right = sq[:, None] * self.v.detach()           # r x cols
        left = self.u.detach() * sq[None, :]            # rows x r
        factors = self.fmt.split(left, right, self.shape)
        return self.fmt.to_module(self._template(), factors)

    def _template(self) -> nn.Module:
        """A dense layer of this one's geometry and bias (weight left uninitialised: only its shape is read)."""
        dt, dev = self.u.dtype, self.u.device
        has_b = self.bias is not None
        # skip_init: no parameter initialisation, so the global RNG is not consumed by a throwaway layer.
        if self.is_linear:
            m = torch.nn.utils.skip_init(nn.Linear, self.in_features, self.out_features, bias=has_b, device=dev,
                                         dtype=dt)
        else:
            m = torch.nn.utils.skip_init(nn.Conv2d, self.c, self.n, (self.kh, self.kw), self.stride, self.padding,
                                         self.dilation, bias=has_b, device=dev, dtype=dt)
        if has_b:
            with torch.no_grad():
                m.bias.copy_(self.bias.detach())
        return m


def _eligible(m: nn.Module) -> bool:
    if isinstance(m, nn.Linear):
        return min(m.weight.shape) > 1
    return (
        isinstance(m, nn.Conv2d)
        and m.groups == 1
        and m.padding_mode == "zeros"
        and not isinstance(m.padding, str)
        and min(m.out_channels, m.in_channels * m.kernel_size[0] * m.kernel_size[1]) > 1
    )


def select_targets(model: nn.Module, structure: dict[str, dict]) -> list[str]:
    """Layers to train in SVD form: the conv/linear layers the structure factorizes, or every eligible conv.

    Layers named by the structure that are not plain convs/linears in ``model`` (e.g. depthwise) are skipped.
    """
    if structure:
        names = []
        for name, entry in structure.items():
            fmt = entry.get("format")
            try:
                m = get_module(model, name)
            except AttributeError:
                raise ConfigError(f"structure layer {name!r} does not exist in the teacher model") from None
            conv_ok = fmt in CONV_FORMATS and isinstance(m, nn.Conv2d)
            linear_ok = fmt == "linear_svd" and isinstance(m, nn.Linear)
            if (conv_ok or linear_ok) and _eligible(m):
                names.append(name)
        return names
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and _eligible(m)]


def _step_schedule(offset: int, total: int):  # noqa: ANN202 - trainer lr_factor
    """The paper's step schedule over ``total`` steps: x0.1 at 50% and again at 75%."""
    def f(step: int, _local_total: int) -> float:
        t = (step + offset) / max(1, total)
        return 0.01 if t >= 0.75 else 0.1 if t >= 0.5 else 1.0

    return f


def rebuild(teacher: nn.Module, structure: dict[str, dict], form: str) -> nn.Module:
    """A copy of ``teacher`` with the module layout :func:`svd_training` returns for ``structure``.

    Used to load a result's state dict (e.g. written by data-parallel workers): every structure layer becomes the
    same two-layer chain :meth:`SVDConv.to_sequential` produces at the recorded rank (values are placeholders).
    """
    model = copy.deepcopy(teacher)
    for name, entry in structure.items():
        layer = SVDConv(get_module(model, name), form)
        keep = torch.zeros(layer.rank, dtype=torch.bool)
        keep[: int(entry["ranks"][0])] = True
        layer.prune(keep)
        set_module(model, name, layer.to_sequential())
    return model


def mac_capped_rank(layer: "SVDConv", fraction: float) -> int:
    """Largest rank (>= 1) whose factorized MACs stay within ``fraction`` of the layer's dense MACs.

    Used by ``svd.prune_macs``: a short schedule cannot sparsify the spectrum as the paper's 164 epochs do, so a
    MAC cap makes the method comparable with the others at matched MACs (the energy rule still applies when it
    keeps fewer values).
    """
    per_rank, dense = layer.macs_per_pixel(1)
    return max(1, min(layer.rank, int(fraction * dense // max(per_rank, 1))))


@FINETUNE_METHODS.register("svd_training")
def svd_training(job: FinetuneJob) -> FinetuneResult:
    """Train the teacher in SVD form with orthogonality + sparsity, prune by energy, finetune (see module doc).

    Metrics: ``best_val``, ``seconds``, ``acc_before_prune``, ``acc_after_prune``, ``full_ranks``,
    ``pruned_ranks`` (before alignment), ``final_ranks`` (factorized layers), ``reverted_dense``, ``form``,
    ``sparsity``.
    """
    cfg, scfg = job.cfg, job.cfg.svd
    seed_everything(job.seed)
    t0 = time.perf_counter()
    info = dist_info()
    teacher = freeze(copy.deepcopy(job.teacher).to(job.device))
    model = copy.deepcopy(job.teacher).to(job.device)  # the method starts from the dense trained weights
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    targets = select_targets(model, job.structure)
    layers: dict[str, SVDConv] = {}
    for name in targets:
        layer = SVDConv(get_module(model, name), scfg.form).to(job.device)
        set_module(model, name, layer)
        layers[name] = layer
    sparsity_fn = SPARSITY.get(scfg.sparsity)

    def regularizer(lambda_s: float):  # noqa: ANN202
        def extra() -> tuple[Tensor, dict[str, float]]:
            live = list(layers.values())
            if not live:
                return torch.zeros((), device=job.device), {}
            ortho = torch.stack([m.orthogonality() for m in live]).sum()
            term = scfg.lambda_o * ortho
            parts = {"ortho": float(ortho.detach())}
            if lambda_s > 0:
                sp = torch.stack([sparsity_fn(m.s) for m in live]).sum()
                term = term + lambda_s * sp
                parts["sparsity"] = float(sp.detach())
            return term, parts

        return extra

    a, b, c = scfg.phase_epochs
    steps = len(sharded_loader(job.data.train, cfg.batch_size, 0, job.seed, info))
    common = dict(batch_size=cfg.batch_size, seed=job.seed, device=job.device, progress=job.progress,
                  steps_per_epoch=steps)
    epochs_log: list[dict[str, Any]] = []

    # Phases 1-2 share one optimizer (Adam state carries over) and one step schedule over a + b epochs.
    opt = make_optimizer(model.parameters(), "adam", scfg.lr, cfg.weight_decay)
    h1 = train_epochs(model, job.data, epochs=a, optimizer=opt,
                      loss_fn=distill_loss_fn(cfg, teacher, extra=regularizer(0.0)),
                      lr_factor=_step_schedule(0, (a + b) * steps), keep_best=False, phase="orthogonality",
                      desc="svd:ortho", **common)
    h2 = train_epochs(model, job.data, epochs=b, optimizer=opt,
                      loss_fn=distill_loss_fn(cfg, teacher, extra=regularizer(scfg.lambda_s)),
                      lr_factor=_step_schedule(a * steps, (a + b) * steps), keep_best=False, epoch_offset=a,
                      phase="sparsity", desc="svd:sparse", **common)
    epochs_log += h1["epochs"] + h2["epochs"]
    acc_before = evaluate(model, job.data.val, device=job.device)

    # Prune: energy threshold, then round the kept rank up to the hardware alignment.
    full_ranks, pruned_ranks, final_ranks, reverted = {}, {}, {}, []
    for name, layer in list(layers.items()):
        full_ranks[name] = layer.rank
        mask = energy_keep_mask(layer.s.detach(), scfg.prune_energy)
        k0 = int(mask.sum())
        if scfg.prune_macs is not None:
            k0 = min(k0, mac_capped_rank(layer, scfg.prune_macs))
        pruned_ranks[name] = k0
        k = aligned_rank(k0, job.align, layer.rank)
        fact, dense = layer.macs_per_pixel(k)
        if fact >= dense:
            set_module(model, name, layer.to_dense())
            del layers[name]
            reverted.append(name)
            continue
        order = torch.argsort(layer.s.detach().abs(), descending=True)
        keep = torch.zeros_like(mask)
        keep[order[:k]] = True
        layer.prune(keep)
        final_ranks[name] = k
    acc_after = evaluate(model, job.data.val, device=job.device)

    # Phase 3: finetune the pruned model (orthogonality kept, sparsity off), best epoch by validation accuracy.
    opt = make_optimizer(model.parameters(), "adam", scfg.lr, cfg.weight_decay)
    h3 = train_epochs(model, job.data, epochs=c, optimizer=opt,
                      loss_fn=distill_loss_fn(cfg, teacher, extra=regularizer(0.0)),
                      lr_factor=_step_schedule(0, c * steps), keep_best=True, epoch_offset=a + b,
                      phase="finetune", desc="svd:finetune", **common)
    epochs_log += h3["epochs"]
    best_val = h3["best_val"] if c > 0 else acc_after

    # Deployable form: plain conv chains with sqrt|s| folded into both factors.
    structure: dict[str, dict] = {}
    for name, layer in layers.items():
        set_module(model, name, layer.to_sequential())
        structure[name] = {"format": FORM_FORMATS[layer.form], "ranks": [layer.rank]}
    model.eval()
    history = {"epochs": epochs_log, "best_val": best_val}
    metrics = {
        "best_val": best_val,
        "seconds": time.perf_counter() - t0,
        "acc_before_prune": acc_before,
        "acc_after_prune": acc_after,
        "full_ranks": full_ranks,
        "pruned_ranks": pruned_ranks,
        "final_ranks": final_ranks,
        "reverted_dense": reverted,
        "form": scfg.form,
        "sparsity": scfg.sparsity,
        "nproc": info.world,
    }
    return FinetuneResult(model=model, structure=structure, history=history, metrics=metrics)


__all__ = ["SVDConv", "rebuild", "select_targets", "svd_training"]
