"""Digests of folders, modules and datasets, so a test can prove it left a shared (session-scoped) fixture as it
found it."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn


def tree_digest(root: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root`` (the run lock's file excepted: taking it is no
    change)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def module_digest(model: nn.Module) -> str:
    """sha256 of a module's state (every parameter and buffer, with names), gradient flags and training flags."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    for name, p in model.named_parameters():
        h.update(f"{name}:{p.requires_grad}".encode())
    for name, m in model.named_modules():
        h.update(f"{name}:{m.training}".encode())
    return h.hexdigest()


def tensors_digest(obj: object) -> str:
    """sha256 of every tensor attribute of ``obj`` and of its ``train``/``val``/``test`` splits (dataset fixtures)."""
    h = hashlib.sha256()
    for part in (obj, *(getattr(obj, s, None) for s in ("train", "val", "test"))):
        for k, v in sorted(vars(part).items()) if part is not None else ():
            if isinstance(v, torch.Tensor):
                h.update(k.encode())
                h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
