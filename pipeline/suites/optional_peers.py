"""Optional peers of the ``peers`` suite (the ``peers`` extra): each builds an ONNX file from the same original model
with another tool, so the suite can measure it beside ours. A peer whose package is missing is skipped by the suite
and named in its notes.

* NNCF post-training quantization of the original ONNX graph (int8, the run's calibration images);
* tensorly-torch factorized convolutions at our Tucker-2 ranks (the same layers, no finetuning): how fast the
  graphs its layers export to run, against ours at the same ranks.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from exporters.onnx import export_onnx


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
