"""ONNX Runtime vs PyTorch parity: input/output names and count, shapes, finiteness, allclose; every failure collected."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from pipeline.errors import ValidationError
from pipeline.ort_session import make_session
from pipeline.torch_eval import eval_mode


def _torch_outputs(model: nn.Module, x: np.ndarray) -> list[np.ndarray]:
    """Run the model in float32 and flatten tuple/list/dict outputs into ONNX output order."""
    # eval mode for the check, then the caller's training flags back: their model is not ours to change
    with eval_mode(model), torch.no_grad():
        out: Any = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    if isinstance(out, torch.Tensor):
        outs = [out]
    elif isinstance(out, dict):
        outs = list(out.values())
    else:
        outs = list(out)
    return [o.detach().float().cpu().numpy() for o in outs]


def check_parity(
    model: nn.Module,
    onnx_path: str | Path,
    inputs: Sequence[np.ndarray],
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> dict:
    """Compare PyTorch (eval, float32) with ONNX Runtime (CPU EP only) on each input batch.

    Every problem over all batches is collected first, then one ValidationError lists them all, so a broken export
    is diagnosed in one run instead of one failure at a time.

    Args:
        model: the PyTorch model the ONNX file was exported from (not modified).
        onnx_path: the exported model.
        inputs: float32 arrays ``(N, C, H, W)``; pass batch 1 and a batch > 1 to exercise the dynamic batch axis.
        atol: absolute tolerance (``np.allclose`` semantics).
        rtol: relative tolerance.

    Returns:
        ``{"batches": [{"batch", "max_abs", "max_rel"}], "atol", "rtol", "input_name", "output_names"}`` where
        ``max_rel = max |ort - torch| / (|torch| + atol)`` (bounded near zero, unlike a plain ratio).

    Raises:
        ValidationError: listing every failure (name/count/shape mismatch, non-finite values, tolerance exceeded).
    """
    if not inputs:
        raise ValidationError(f"parity check of {Path(onnx_path).name}: no input batches given")
    sess = make_session(onnx_path, threads=1)  # parity, not speed: stay polite on shared machines
    sess_inputs = sess.get_inputs()
    out_names = [o.name for o in sess.get_outputs()]
    failures: list[str] = []
    batches: list[dict[str, Any]] = []
    if len(sess_inputs) != 1:
        failures.append(f"expected 1 graph input, found {len(sess_inputs)}: {[i.name for i in sess_inputs]}")
    in_name = sess_inputs[0].name if sess_inputs else ""
    for x in inputs:
        x = np.ascontiguousarray(x, dtype=np.float32)
        n = int(x.shape[0])
        entry: dict[str, Any] = {"batch": n, "max_abs": None, "max_rel": None}
        batches.append(entry)
        try:
            got = sess.run(None, {in_name: x})
        except Exception as e:  # an ORT error at batch n is itself a parity failure (e.g. batch axis not dynamic)
            failures.append(f"batch {n}: ONNX Runtime failed: {type(e).__name__}: {e}")
            continue
        ref = _torch_outputs(model, x)
        if len(got) != len(ref):
            failures.append(f"batch {n}: ONNX has {len(got)} outputs {out_names}, torch has {len(ref)}")
            continue
        max_abs = 0.0
        max_rel = 0.0
        for name, a, b in zip(out_names, got, ref):
            if a.shape != b.shape:
                failures.append(f"batch {n}, output {name!r}: shape {tuple(a.shape)} (ONNX) != {tuple(b.shape)} (torch)")
                continue
            if not np.all(np.isfinite(a)):
                failures.append(f"batch {n}, output {name!r}: ONNX output has NaN/Inf")
                continue
            if not np.all(np.isfinite(b)):
                failures.append(f"batch {n}, output {name!r}: torch output has NaN/Inf")
                continue
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
            if diff.size:
                max_abs = max(max_abs, float(diff.max()))
                max_rel = max(max_rel, float((diff / (np.abs(b) + atol)).max()))
            if not np.allclose(a, b, atol=atol, rtol=rtol):
                bad = int((diff > atol + rtol * np.abs(b)).sum())
                failures.append(
                    f"batch {n}, output {name!r}: {bad}/{diff.size} values outside atol={atol:g} rtol={rtol:g} "
                    f"(max abs {float(diff.max()):.3g})"
                )
        entry["max_abs"] = max_abs
        entry["max_rel"] = max_rel
    if failures:
        raise ValidationError(
            f"ONNX Runtime vs PyTorch parity failed for {Path(onnx_path).name} ({len(failures)} problem(s)):\n  - "
            + "\n  - ".join(failures)
        )
    return {"batches": batches, "atol": atol, "rtol": rtol, "input_name": in_name, "output_names": out_names}
