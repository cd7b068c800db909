"""Optional peers of the ``peers`` suite (the ``peers`` extra): each builds an ONNX file from the same original model
with another tool, so the suite can measure it beside ours. A peer whose package is missing is skipped by the suite
and named in its notes.

* NNCF post-training quantization of the original ONNX graph (int8, the run's calibration images);
* tensorly-torch factorized convolutions at our Tucker-2 ranks (the same layers, no finetuning): how fast the
  graphs its layers export to run, against ours at the same ranks;
* Torch-Pruning structured channel pruning (L2 magnitude) of the original to our factorized model's MACs, followed
  by the same distillation budget (our ``kd`` finetune with the run's settings): the speed alternative most edge
  engineers use.
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from exporters.onnx import export_onnx
from pipeline.factorize.swap import count_macs_params
from pipeline.finetune import finetune
from pipeline.finetune.job import FinetuneJob


def nncf_ptq(original: Path, dst: Path, calib: np.ndarray) -> Path:
    """NNCF's default post-training int8 quantization of ``original`` calibrated on ``calib`` (N, C, H, W)."""
    import nncf

    model = onnx.load(str(original))
    name = model.graph.input[0].name
    data = nncf.Dataset([calib[i:i + 1] for i in range(len(calib))], lambda x: {name: x})
    quantized = nncf.quantize(model, data, subset_size=len(calib))
    onnx.save(quantized, str(dst))
    return dst


def tltorch_tucker(model: torch.nn.Module, structure: dict[str, dict[str, Any]], shape: tuple[int, int, int],
                   dst: Path) -> Path:
    """``model`` with each Tucker-2 layer of ``structure`` replaced by tensorly-torch's ``FactorizedConv`` at the
    same ranks (output rank, input rank, full kernel), exported to ONNX like ours (opset 17, simplified)."""
    import tltorch

    model = model.eval()
    for name, entry in structure.items():
        if entry.get("format") != "tucker2":
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        conv = getattr(parent, attr)
        r_out, r_in = (int(r) for r in entry["ranks"])
        kh, kw = conv.kernel_size
        fact = tltorch.FactorizedConv.from_conv(conv, rank=(r_out, r_in, kh, kw), factorization="tucker",
                                                decompose_weights=True, implementation="factorized")
        setattr(parent, attr, fact)
    export_onnx(model, shape, dst, opset=17, simplify=True)
    return dst


def _pruned(model: torch.nn.Module, ratio: float, example: torch.Tensor) -> torch.nn.Module:
    """A copy of ``model`` with ``ratio`` of each prunable layer's channels removed (L2 magnitude, the classifier kept)."""
    import torch_pruning as tp

    m = copy.deepcopy(model).eval()
    keep = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)][-1:]
    tp.pruner.MagnitudePruner(m, example, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
                              ignored_layers=keep).step()
    return m


def torch_pruning_kd(dense: torch.nn.Module, target_macs: int, data: Any, finetune_cfg: Any, seed: int,
                     shape: tuple[int, int, int], dst: Path) -> tuple[Path, float]:
    """``dense`` pruned to about ``target_macs`` MACs (bisection on the channel ratio), distilled from ``dense``
    with ``finetune_cfg`` (method kd), exported like ours; returns the file and the pruning ratio used."""
    example = torch.zeros(1, *shape)
    lo, hi = 0.0, 0.95
    for _ in range(10):  # MACs fall monotonically with the ratio: bisect to the target
        mid = (lo + hi) / 2
        macs, _ = count_macs_params(_pruned(dense, mid, example), example)
        lo, hi = (mid, hi) if macs > target_macs else (lo, mid)
    student = _pruned(dense, hi, example)
    job = FinetuneJob(student=student, teacher=dense, structure={}, data=data,
                      cfg=dataclasses.replace(finetune_cfg, method="kd", nproc=1), seed=seed, progress=False)
    model = finetune(job).model.eval()
    export_onnx(model, shape, dst, opset=17, simplify=True)
    return dst, hi
