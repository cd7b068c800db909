"""Comparison logic of ``make arm64-check``: x86 reference outputs vs the outputs of the same graph on arm64.

Pure numpy + stdlib, because it is imported by both sides: the x86 driver (project venv) and the aarch64 Python
under emulation, which has only numpy and onnxruntime. Also holds a tiny reader for the ORT-format version stamped
in a ``.ort`` file, so either side can report it without the flatbuffers package.
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass

import numpy as np

# The graphs that ship in deploy/, in table order; the check runs whichever are present.
SHIPPED_GRAPHS = ("model.onnx", "model.int8.onnx", "model.ort", "model.int8.ort")


@dataclass(frozen=True)
class Tolerance:
    """Pass if ``|got - ref| <= atol + rtol * |ref|`` elementwise and, if ``argmax`` is set, every argmax agrees."""

    atol: float
    rtol: float
    argmax: bool = True


# fp32: x86 (AVX2/AVX-512 MLAS) and arm64 (NEON MLAS) kernels sum convolutions in different orders and may fuse
# multiply-adds differently, so logits differ in the last bits; 1e-4 is ~10x what VGG11 on 32x32 shows (~1e-5).
FP32_TOLERANCE = Tolerance(atol=1e-4, rtol=1e-4)
# int8 (QDQ graphs, fused by ORT into integer QLinearConv/QGemm kernels): the kernels are not bit-identical across
# CPUs. x86 without VNNI multiplies u8 x s8 with vpmaddubsw, whose int16 pair sums saturate, so its outputs can be
# several quantisation steps away from what the graph means; arm64 (NEON/dot-product) accumulates in int32 and only
# its requantisation rounding differs. So an int8 graph is judged against the graph's own semantics, computed on
# x86 with optimisations off (DequantizeLinear -> float op -> QuantizeLinear, no integer kernel): the arm64 output
# must be within INT8_STEPS output quantisation steps of it. The distance to the x86 ORT output is reported too.
INT8_STEPS = 1.0


def tolerance_for(filename: str, step: float | None = None) -> Tolerance:
    """Tolerance of one shipped graph: fp32 fixed; ``*.int8.*`` within INT8_STEPS output steps (no argmax rule)."""
    if ".int8." not in filename:
        return FP32_TOLERANCE
    if step is None:  # no quantised output found: nothing to scale by, so demand exactness
        return Tolerance(atol=0.0, rtol=0.0, argmax=False)
    # 1e-3 of a step absorbs the float32 rounding of (q - zp) * scale on either side.
    return Tolerance(atol=INT8_STEPS * step * (1 + 1e-3), rtol=0.0, argmax=False)


def seeded_inputs(shape: list, seed: int = 0, batch: int = 8) -> np.ndarray:
    """Deterministic float32 input for a graph input of ``shape`` (symbolic or unknown dims: batch first, else error).

    Standard-normal values: the shipped graphs take normalised input, so this covers their usual range and some
    saturation of the int8 input quantiser, which is where kernels are most likely to differ.
    """
    dims = []
    for i, d in enumerate(shape):
        if isinstance(d, int) and d > 0:
            dims.append(d)
        elif i == 0:
            dims.append(batch)
        else:
            raise ValueError(f"input dim {i} is symbolic ({d!r}); pass --inputs FILE.npz with a concrete input")
    return np.random.default_rng(seed).standard_normal(dims).astype(np.float32)


def compare_outputs(ref: np.ndarray, got: np.ndarray, tol: Tolerance) -> dict:
    """Compare one output tensor with its reference; returns the figures and ``ok`` (JSON-ready, plain types).

    ``argmax_agree`` is the fraction of rows (last axis) whose argmax matches, or None for outputs of rank < 2.
    """
    ref = np.asarray(ref)
    got = np.asarray(got)
    if ref.shape != got.shape:
        return {"shape_ref": list(ref.shape), "shape_got": list(got.shape), "max_abs_diff": None,
                "max_rel_diff": None, "exact": False, "argmax_agree": None, "ok": False,
                "why": f"shape {list(got.shape)} != reference {list(ref.shape)}"}
    r = ref.astype(np.float64)
    g = got.astype(np.float64)
    if not (np.isfinite(r).all() and np.isfinite(g).all()):
        same_nonfinite = bool(np.array_equal(r, g, equal_nan=True))
        return {"shape_ref": list(ref.shape), "shape_got": list(got.shape), "max_abs_diff": None,
                "max_rel_diff": None, "exact": same_nonfinite, "argmax_agree": None, "ok": same_nonfinite,
                "why": "" if same_nonfinite else "non-finite values differ"}
    diff = np.abs(g - r)
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float((diff / np.maximum(np.abs(r), 1e-12)).max()) if diff.size else 0.0
    within = bool((diff <= tol.atol + tol.rtol * np.abs(r)).all())
    agree = None
    if ref.ndim >= 2 and ref.shape[-1] > 1 and ref.size:
        agree = float((r.argmax(axis=-1) == g.argmax(axis=-1)).mean())
    ok = within and (not tol.argmax or agree is None or agree == 1.0)
    why = ""
    if not within:
        why = f"max |diff| {max_abs:.3g} over atol {tol.atol:g} + rtol {tol.rtol:g}*|ref|"
    elif not ok:
        why = f"argmax agrees on {agree:.1%} of rows"
    return {"shape_ref": list(ref.shape), "shape_got": list(got.shape), "max_abs_diff": max_abs,
            "max_rel_diff": max_rel, "exact": bool(np.array_equal(r, g)), "argmax_agree": agree, "ok": ok,
            "why": why}


def compare_graph(filename: str, refs: dict[str, np.ndarray], gots: dict[str, np.ndarray],
                  semantic_refs: dict[str, np.ndarray] | None = None,
                  steps: dict[str, float] | None = None) -> dict:
    """Compare every output of one graph; one row of the report (``verdict`` pass only if all outputs pass).

    ``refs`` are the x86 ORT outputs. For int8 graphs, ``semantic_refs`` (x86, optimisations off) and ``steps`` (the
    output quantisation scale per output) make the verdict "within INT8_STEPS steps of the graph's semantics"; the
    x86 comparison is then reported but does not decide. Without them an int8 graph must match x86 exactly.
    """
    int8 = ".int8." in filename
    use_sem = int8 and semantic_refs is not None and steps is not None
    missing = sorted(set(refs) - set(gots))
    outputs: dict[str, dict] = {}
    for name in sorted(refs):
        if name not in gots:
            continue
        step = steps.get(name) if steps else None
        tol = tolerance_for(filename, step if use_sem else None)
        vs_x86 = compare_outputs(refs[name], gots[name], tol)
        if use_sem and name in semantic_refs and step:
            vs_sem = compare_outputs(semantic_refs[name], gots[name], tol)
            x86_sem = compare_outputs(semantic_refs[name], refs[name], tol)
            vs_x86["ok"] = vs_sem["ok"]
            vs_x86["why"] = vs_sem["why"] and f"vs the graph's QDQ semantics: {vs_sem['why']}"
            vs_x86["step"] = step
            vs_x86["arm64_steps_from_semantics"] = _steps(vs_sem["max_abs_diff"], step)
            vs_x86["x86_steps_from_semantics"] = _steps(x86_sem["max_abs_diff"], step)
        outputs[name] = vs_x86
    ok = not missing and bool(outputs) and all(o["ok"] for o in outputs.values())
    diffs = [o["max_abs_diff"] for o in outputs.values() if o["max_abs_diff"] is not None]
    agrees = [o["argmax_agree"] for o in outputs.values() if o["argmax_agree"] is not None]
    arm_steps = [o["arm64_steps_from_semantics"] for o in outputs.values() if "arm64_steps_from_semantics" in o]
    x86_steps = [o["x86_steps_from_semantics"] for o in outputs.values() if "x86_steps_from_semantics" in o]
    whys = [f"{n}: {o['why']}" for n, o in outputs.items() if o["why"]] + [f"output {m} missing" for m in missing]
    first_step = next(iter(steps.values())) if use_sem and steps else None
    return {"file": filename, "tolerance": asdict(tolerance_for(filename, first_step)), "outputs": outputs,
            "max_abs_diff": max(diffs) if diffs else None, "argmax_agree": min(agrees) if agrees else None,
            "exact": bool(outputs) and all(o["exact"] for o in outputs.values()) and not missing,
            "arm64_steps_from_semantics": max(arm_steps) if arm_steps else None,
            "x86_steps_from_semantics": max(x86_steps) if x86_steps else None,
            "verdict": "pass" if ok else "FAIL", "why": "; ".join(whys)}


def _steps(diff: float | None, step: float) -> float | None:
    """A difference in output quantisation steps, rounded (differences of dequantised values are whole steps)."""
    return None if diff is None else round(diff / step, 2)


def error_row(filename: str, message: str) -> dict:
    """Row for a graph the arm64 runtime could not load or run."""
    return {"file": filename, "tolerance": asdict(tolerance_for(filename)), "outputs": {}, "max_abs_diff": None,
            "argmax_agree": None, "exact": False, "arm64_steps_from_semantics": None,
            "x86_steps_from_semantics": None, "verdict": "FAIL", "why": message}


def format_table(rows: list[dict]) -> str:
    """Plain-text table: file, max abs diff and argmax agreement vs x86, exact, int8 distance from the graph's QDQ
    semantics in output steps (arm64 | x86), verdict; then the reason of each failure."""
    head = ("file", "max abs diff vs x86", "argmax agree", "exact", "int8 steps arm64|x86 from QDQ", "verdict")
    lines = []
    for r in rows:
        diff = "-" if r.get("max_abs_diff") is None else f"{r['max_abs_diff']:.3g}"
        agree = "-" if r.get("argmax_agree") is None else f"{r['argmax_agree']:.1%}"
        a, x = r.get("arm64_steps_from_semantics"), r.get("x86_steps_from_semantics")
        steps = "-" if a is None else f"{a:g} | {x:g}"
        lines.append((r["file"], diff, agree, "yes" if r.get("exact") else "no", steps, r["verdict"]))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*line) for line in lines]
    out += [f"  {r['file']}: {r['why']}" for r in rows if r["verdict"] != "pass" and r.get("why")]
    return "\n".join(out)


def ort_format_version(data: bytes) -> str | None:
    """The ORT-format version string of a ``.ort`` file (flatbuffer ``InferenceSession.ort_version``), or None.

    Layout (ort.fbs): a flatbuffer with file identifier ``ORTM``; the root table's field 0 is the version string.
    Runtimes accept only the format versions they know, so this is what decides whether an older ORT can load it.
    """
    if len(data) < 12 or data[4:8] != b"ORTM":
        return None
    try:
        (table,) = struct.unpack_from("<I", data, 0)
        (vt_rel,) = struct.unpack_from("<i", data, table)
        vtable = table - vt_rel
        (vt_size,) = struct.unpack_from("<H", data, vtable)
        if vt_size < 6:
            return None
        (field_off,) = struct.unpack_from("<H", data, vtable + 4)
        if field_off == 0:
            return None
        pos = table + field_off
        (str_rel,) = struct.unpack_from("<I", data, pos)
        (length,) = struct.unpack_from("<I", data, pos + str_rel)
        start = pos + str_rel + 4
        if start + length > len(data):
            return None
        return data[start:start + length].decode("ascii")
    except (struct.error, UnicodeDecodeError):
        return None
