"""Training loop shared by the baseline trainer and every finetuning method.

One loop (``train_epochs``) serves all methods so that data order, seeding, LR schedules, best-checkpoint selection,
progress reporting and data-parallel execution behave identically everywhere; methods only supply a loss function,
an optimizer and optional per-step / per-epoch hooks (LRA's projection, ELRT's penalty log, ...).

Data parallelism: when ``torch.distributed`` is initialised (the ``ddp`` launcher does that), the loop wraps the
model in ``DistributedDataParallel`` and shards each epoch with ``DistributedSampler`` (``set_epoch`` every epoch).
With ``W`` processes and a global batch ``B`` each process takes ``B // W`` samples per step; because the sampler
deals a single seeded permutation round-robin, the union of the shards of one step is exactly the batch a single
process would have drawn, so 1-process and W-process runs see the same global batches.
"""
from __future__ import annotations

import copy
import math
import random
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.data import DatasetSplits, Split, make_loader
from pipeline.errors import ConfigError, InputError, NumericalError
from pipeline.logs import ROOT, get_logger
from pipeline.torch_eval import eval_mode

if TYPE_CHECKING:  # annotations only
    from pipeline.config import BaselineConfig

LossFn = Callable[[Tensor, Tensor, Tensor], "tuple[Tensor, dict[str, float]]"]


# ----------------------------------------------------------------------------------------------- basics

_log = get_logger(ROOT)  # the runner's logger: stderr and run.log


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False

def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so a run is reproducible on CPU for a given seed."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a data-parallel group (``world == 1`` outside ``torchrun``)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        """Only rank 0 logs, shows progress and writes files."""
        return self.rank == 0


def dist_info() -> DistInfo:
    """The current process group's rank/world, or a single-process ``DistInfo``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return DistInfo(rank=dist.get_rank(), world=dist.get_world_size())
    return DistInfo()


def _labels(split: Split, what: str) -> Tensor:
    if split.y is None:
        raise InputError(f"{what} needs labels but the split has none (y is None); use a labelled train/val split")
    return split.y


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = 256, device: str = "cpu") -> float:
    """Top-1 accuracy of ``model`` on ``split``.

    The model is put in eval mode for the measurement and its previous train/eval mode is restored afterwards.

    Args:
        model: classifier returning logits ``(N, classes)``.
        split: images ``x`` (NCHW float) and int64 labels ``y`` (required).
        batch_size: evaluation batch size.
        device: torch device string.

    Returns:
        Accuracy in ``[0, 1]`` (0.0 for an empty split).

    Raises:
        InputError: the split has no labels.
    """
    y_all = _labels(split, "evaluate()")
    n = int(split.x.shape[0])
    if n == 0:
        return 0.0
    correct = 0
    with eval_mode(model):
        for i in range(0, n, batch_size):
            x = split.x[i : i + batch_size].to(device)
            y = y_all[i : i + batch_size].to(device)
            correct += int((model(x).argmax(dim=1) == y).sum())
    return correct / n


def cosine_factor(step: int, total: int) -> float:
    """Cosine decay multiplier from 1 at ``step == 0`` towards 0 at ``step == total``."""
    if total <= 0:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def warmup_cosine(warmup_steps: int) -> Callable[[int, int], float]:
    """LR multiplier: linear from ``1/warmup_steps`` up to 1 over ``warmup_steps``, then cosine decay to 0 at the end.

    ``warmup_steps <= 0`` is plain :func:`cosine_factor`.
    """
    if warmup_steps <= 0:
        return cosine_factor

    def factor(step: int, total: int) -> float:
        w = min(warmup_steps, max(total - 1, 0))
        if step < w:
            return (step + 1) / w
        return cosine_factor(step - w, total - w)

    return factor


def make_optimizer(
    params: Iterable[nn.Parameter], name: str, lr: float, weight_decay: float, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov off) or Adam over the trainable ``params``."""
    params = [p for p in params if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ConfigError(f"unknown optimizer {name!r}; use 'sgd' or 'adam'")


def sharded_loader(
    split: Split, global_batch: int, epoch: int, seed: int, info: DistInfo
) -> torch.utils.data.DataLoader:
    """One epoch of shuffled batches for this process (``DistributedSampler`` with ``set_epoch``).

    Args:
        split: labelled split.
        global_batch: batch size summed over processes; each process takes ``max(1, global_batch // world)``.
        epoch: epoch index (changes the permutation, identically on every rank).
        seed: run seed.
        info: rank/world of this process.
    """
    from torch.utils.data import DataLoader, TensorDataset
    from torch.utils.data.distributed import DistributedSampler

    ds = TensorDataset(split.x, _labels(split, "training"))
    sampler = DistributedSampler(ds, num_replicas=info.world, rank=info.rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    per_proc = max(1, global_batch // info.world)
    return DataLoader(ds, batch_size=per_proc, sampler=sampler, num_workers=0)


def teacher_logits_fn(teacher: nn.Module | None) -> Callable[[Tensor], Tensor | None]:
    """``x -> teacher(x)`` without gradients (teacher frozen in eval mode), or ``x -> None``."""
    if teacher is None:
        return lambda x: None

    def fn(x: Tensor) -> Tensor:
        with torch.no_grad():
            return teacher(x)

    return fn


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode, no gradients: the teacher must never change (BN statistics included)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ----------------------------------------------------------------------------------------------- the loop
def train_epochs(
    model: nn.Module,
    data: DatasetSplits,
    *,
    epochs: int,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    seed: int,
    device: str = "cpu",
    progress: bool = True,
    desc: str = "train",
    lr_factor: Callable[[int, int], float] = cosine_factor,
    batches: Callable[[int], Iterable[tuple[Tensor, Tensor]]] | None = None,
    steps_per_epoch: int | None = None,
    after_step: Callable[[int], None] | None = None,
    epoch_end: Callable[[nn.Module], dict[str, Any]] | None = None,
    score_key: str = "val_acc",
    keep_best: bool = True,
    epoch_offset: int = 0,
    phase: str | None = None,
    eval_batch: int = 256,
) -> dict[str, Any]:
    """Train ``model`` in place for ``epochs`` epochs; optionally restore the best epoch's weights.

    Args:
        model: the raw module (wrapped in DDP here when a process group is active).
        data: dataset; ``train`` is trained on, ``val`` selects the best epoch.
        epochs: number of epochs (0 is allowed: only the initial validation is recorded).
        batch_size: global batch size.
        optimizer: built over ``model``'s parameters; its groups' ``initial_lr`` (set here) is the base LR.
        loss_fn: ``(logits, x, y) -> (loss, parts)``; ``parts`` are floats logged per epoch.
        seed: run seed (data order).
        device: torch device string.
        progress: show a tqdm bar (stderr; rank 0 only).
        desc: progress bar label.
        lr_factor: ``(global_step, total_steps) -> multiplier`` applied to the base LR before each step.
        batches: ``epoch -> iterable of (x, y)``; default is :func:`sharded_loader` on ``data.train``.
        steps_per_epoch: needed for the LR schedule when ``batches`` has no ``len``.
        after_step: called with the 1-based global step count after every optimizer step.
        epoch_end: ``model -> dict`` of extra per-epoch metrics (e.g. a projected accuracy).
        score_key: per-epoch field that selects the best checkpoint (``val_acc`` unless ``epoch_end`` adds one).
        keep_best: restore the best-scoring weights at the end (the initial weights count as epoch "-1" only when
            ``epochs == 0``).
        epoch_offset: added to the epoch index in the history and the data order (phases of one run).
        phase: optional phase label recorded in each epoch entry.
        eval_batch: evaluation batch size.

    Returns:
        ``{"epochs": [per-epoch dicts], "best_val": best score, "best_epoch": index or None}``.
    """
    from tqdm import tqdm

    info = dist_info()
    fwd: nn.Module = model
    if info.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [torch.device(device).index or 0] if device.startswith("cuda") else None
        fwd = DDP(model, device_ids=ids)
    if batches is None:
        batches = lambda ep: sharded_loader(data.train, batch_size, ep, seed, info)  # noqa: E731
    if steps_per_epoch is None:
        try:
            steps_per_epoch = len(batches(epoch_offset))  # type: ignore[arg-type]
        except TypeError:
            steps_per_epoch = math.ceil(int(data.train.x.shape[0]) / batch_size)
    total = max(1, epochs * steps_per_epoch)
    for g in optimizer.param_groups:
        g.setdefault("initial_lr", g["lr"])

    hist: list[dict[str, Any]] = []
    best_score = -math.inf
    best_state: dict[str, Tensor] | None = None
    best_epoch: int | None = None
    step = 0
    for e in range(epochs):
        ep = e + epoch_offset
        model.train()
        loss_sum = torch.zeros(3, dtype=torch.float64)  # loss * n, correct, n
        parts_sum: dict[str, float] = {}
        bar = tqdm(
            batches(ep),
            total=steps_per_epoch,
            desc=f"{desc} {ep + 1}",
            leave=False,
            file=sys.stderr,
            # Off a terminal tqdm's carriage-return updates flood the log (95 KB for a tiny run): one line per
            # epoch is logged below instead.
            disable=not (progress and info.is_main and _stderr_is_tty()),
            dynamic_ncols=True,
        )
        for x, y in bar:
            x, y = x.to(device), y.to(device)
            f = lr_factor(step, total)
            for g in optimizer.param_groups:
                g["lr"] = g["initial_lr"] * f
            logits = fwd(x)
            loss, parts = loss_fn(logits, x, y)
            if not torch.isfinite(loss):
                raise NumericalError(
                    f"{desc}: loss became {float(loss)} at epoch {ep + 1}, step {step + 1}; lower the learning rate"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if after_step is not None:
                after_step(step)
            b = int(y.shape[0])
            loss_sum += torch.tensor([float(loss.detach()) * b, float((logits.argmax(1) == y).sum()), b],
                                     dtype=torch.float64)
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v * b
            if loss_sum[2] > 0:
                bar.set_postfix(loss=f"{loss_sum[0] / loss_sum[2]:.3f}", acc=f"{loss_sum[1] / loss_sum[2]:.3f}")
        bar.close()
        if info.world > 1:
            # Sum the per-rank tallies so the history describes the whole global epoch on every rank.
            import torch.distributed as dist

            keys = sorted(parts_sum)
            t = torch.cat([loss_sum, torch.tensor([parts_sum[k] for k in keys], dtype=torch.float64)])
            if device.startswith("cuda"):
                t = t.to(device)
            dist.all_reduce(t)
            t = t.cpu()
            loss_sum = t[:3]
            parts_sum = {k: float(v) for k, v in zip(keys, t[3:])}
        n = max(1.0, float(loss_sum[2]))
        entry: dict[str, Any] = {
            "epoch": ep + 1,
            "loss": float(loss_sum[0]) / n,
            "train_acc": float(loss_sum[1]) / n,
            "lr": optimizer.param_groups[0]["lr"],
        }
        if phase is not None:
            entry["phase"] = phase
        entry.update({k: v / n for k, v in parts_sum.items()})
        # Every rank evaluates the full validation set: the weights are identical, so all ranks take the same
        # best-checkpoint decision without extra communication.
        entry["val_acc"] = evaluate(model, data.val, eval_batch, device)
        if epoch_end is not None:
            entry.update(epoch_end(model))
        hist.append(entry)
        if progress and info.is_main and not _stderr_is_tty():
            _log.info("%s epoch %d/%d: loss %.4f, train acc %.4f, val acc %.4f", desc, ep + 1, epochs + epoch_offset,
                      entry["loss"], entry["train_acc"], entry["val_acc"])
        score = float(entry[score_key])
        if score > best_score:
            best_score, best_epoch = score, ep + 1
            if keep_best:
                best_state = copy.deepcopy(model.state_dict())
    if epochs == 0:
        entry = {"val_acc": evaluate(model, data.val, eval_batch, device)}
        if epoch_end is not None:
            entry.update(epoch_end(model))
        best_score = float(entry[score_key])
    if keep_best and best_state is not None:
        model.load_state_dict(best_state)
    return {"epochs": hist, "best_val": best_score, "best_epoch": best_epoch}


# ----------------------------------------------------------------------------------------------- baseline
def train_baseline(
    model: nn.Module,
    data: DatasetSplits,
    cfg: BaselineConfig,
    seed: int,
    device: str = "cpu",
    progress: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train the original (dense) model: SGD with momentum, linear warm-up then cosine LR, optional augmentation,
    best-by-val weights.

    Deterministic on CPU for a given seed: the model arrives already initialised, and the data order and
    augmentation come from ``make_loader(seed=seed + epoch)``.

    Args:
        model: the model to train (not mutated; a deep copy is trained and returned).
        data: dataset splits.
        cfg: epochs, batch size, LR, momentum, weight decay, label smoothing, augment.
        seed: run seed.
        device: torch device string.
        progress: show a progress bar.

    Returns:
        ``(trained model in eval mode, history)`` with history ``{"epochs": [...], "best_val", "seconds", ...}``.
    """
    seed_everything(seed)
    t0 = time.perf_counter()
    net = copy.deepcopy(model).to(device)
    opt = make_optimizer(net.parameters(), "sgd", cfg.lr, cfg.weight_decay, cfg.momentum)

    def loss_fn(logits: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        return F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing), {}

    def batches(epoch: int) -> Iterable[tuple[Tensor, Tensor]]:
        # A new loader per epoch seeded by (seed, epoch): the order and augmentation differ between epochs yet are
        # reproducible, whatever make_loader does with its generator internally.
        return make_loader(data.train, cfg.batch_size, shuffle=True, seed=seed + epoch, augment=cfg.augment)

    steps = math.ceil(int(data.train.x.shape[0]) / cfg.batch_size)
    hist = train_epochs(
        net, data, epochs=cfg.epochs, batch_size=cfg.batch_size, optimizer=opt, loss_fn=loss_fn, seed=seed,
        device=device, progress=progress, desc="baseline", batches=batches, steps_per_epoch=steps,
        lr_factor=warmup_cosine(int(round(cfg.warmup_epochs * steps))),
    )
    hist["seconds"] = time.perf_counter() - t0
    net.eval()
    return net, hist
