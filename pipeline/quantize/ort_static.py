"""Static int8 QDQ quantization with ONNX Runtime, calibrated on real images, with an accuracy guard.

The flow is the one ONNX Runtime recommends: ``quant_pre_process`` (shape inference + graph cleanup) into a temp
file, then ``onnxruntime.quantization.quantize_static`` in QDQ format with per-channel int8 weights and (by default)
uint8 activations; int8 activations are available through ``QuantizeConfig.activation_type``. On x86 hosts without
VNNI, ORT's U8S8 kernels saturate int16 pair sums (``vpmaddubsw``), so ``QuantizeConfig.reduce_range = "auto"``
quantizes weights to 7 bits ([-64, 64]) there, which keeps the fused int8 graph equal to its QDQ semantics
(:mod:`pipeline.quantize.isa`).

Accuracy guard: when an evaluation callback and the fp32 accuracy are given and quantizing everything loses more than
``cfg.max_drop``, every quantizable Conv/Gemm/MatMul node is measured for sensitivity (accuracy regained when that one
node alone stays in float), and the most sensitive nodes are left in float greedily until the guard holds or the
attempt cap is reached. The result dict says which nodes were excluded and whether the guard was met.
"""
from __future__ import annotations

import contextlib

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from pipeline.errors import ConfigError, InputError, NumericalError
from pipeline.logs import get_logger
from pipeline.quantize.isa import host_isa, resolve_reduce_range
from pipeline.quantize.grids import resolve_grid
from pipeline.quantize.names import compact_names
from pipeline.quantize.weights import apply_weight_bits_to_qdq

log = get_logger(__name__)  # under the runner's logger: reaches stderr and run.log

# Op types whose weights ORT's QDQ quantizer turns into int8; these are the candidates of the guard.
GUARD_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul")

try:  # ORT's base class is only needed for isinstance checks inside the quantizer.
    from onnxruntime.quantization import CalibrationDataReader as _CalibBase
except ImportError:  # pragma: no cover - onnxruntime is a hard dependency; keep import errors readable
    _CalibBase = object  # type: ignore[assignment,misc]


class ImageCalibrationReader(_CalibBase):  # type: ignore[misc,valid-type]
    """Feeds real images to ORT's calibrator, ``batch_size`` images at a time, as ``{input_name: float32 array}``.

    Args:
        images: float32 array (N, C, H, W) of preprocessed images exactly as the model sees them at inference.
        input_name: name of the model's (single) image input.
        batch_size: images per calibration batch; 1 matches deployment, small batches calibrate faster.
    """

    def __init__(self, images: np.ndarray, input_name: str, batch_size: int = 1) -> None:
        images = np.asarray(images)
        if images.ndim < 2 or images.shape[0] == 0:
            raise InputError(f"calibration images must be a non-empty batch (N, ...); got shape {images.shape}")
        if not np.isfinite(images).all():
            raise NumericalError("calibration images contain NaN/Inf; fix the dataset or its preprocessing")
        if batch_size < 1:
            raise ConfigError(f"calibration batch_size must be >= 1, got {batch_size}")
        self.images = np.ascontiguousarray(images, dtype=np.float32)
        self.input_name = input_name
        self.batch_size = int(batch_size)
        self._it: Iterator[dict[str, np.ndarray]] = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, len(self.images), self.batch_size):
            yield {self.input_name: self.images[i:i + self.batch_size]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        """Next batch, or None when all images were given (ORT's protocol)."""
        return next(self._it, None)

    def rewind(self) -> None:
        """Start again from the first image (ORT calls this between calibration passes)."""
        self._it = self._batches()

    def __len__(self) -> int:
        return (len(self.images) + self.batch_size - 1) // self.batch_size


def output_sqnr(ref: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of ``test`` against ``ref`` in dB (inf when identical).

    Args:
        ref: reference (fp32) outputs.
        test: outputs of the quantized model, same shape.
    """
    ref = np.asarray(ref, dtype=np.float64)
    test = np.asarray(test, dtype=np.float64)
    if ref.shape != test.shape:
        raise ValueError(f"output_sqnr: shapes differ {ref.shape} vs {test.shape}")
    noise = float(np.sum((ref - test) ** 2))
    signal = float(np.sum(ref ** 2))
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * float(np.log10(signal / noise))


def _quant_type(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    table = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    if name not in table:
        raise ConfigError(f"quantize type {name!r} is not supported; use one of {sorted(table)}")
    return table[name]


def _calib_method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    table = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}
    if name not in table:
        raise ConfigError(f"calibrate_method {name!r} is not supported; use one of {sorted(table)}")
    return table[name]


def _prepare(fp32_onnx: Path, work: Path) -> tuple[Path, bool]:
    """Pre-process (shape inference, cleanup) into ``work``; name unnamed nodes so they can be excluded by name.

    Returns the model path to quantize and whether ``quant_pre_process`` succeeded.
    """
    import onnx

    # absolute before the chdir below: a relative ``work`` (a relative artifacts root) resolved inside ``work``
    # doubled the path, and pre-processing silently failed on every such run
    pre = Path(work).resolve() / "pre.onnx"
    ok = True
    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        # It leaves helper files (sym_shape_infer_temp.onnx, <uuid>.data) in the working directory on some graphs:
        # run it inside the temp folder, with absolute paths, so nothing lands in the user's folder.
        src = Path(fp32_onnx).resolve()
        with contextlib.chdir(work):
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
        model = onnx.load(str(pre))
    except Exception as e:  # noqa: BLE001 - pre-processing is an optimisation; ORT documents it as optional
        log.info("quant_pre_process failed (%s); quantizing the model as exported", e)
        ok = False
        model = onnx.load(str(fp32_onnx))
    # The guard excludes nodes by name; ORT silently ignores unnamed nodes, so give every node a stable name.
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
    named = work / "named.onnx"
    onnx.save(model, str(named))
    return named, ok


def _candidate_nodes(model_path: Path) -> list[str]:
    import onnx

    model = onnx.load(str(model_path))
    inits = {t.name for t in model.graph.initializer}
    # Only nodes with a constant weight get int8 weights; MatMul of two activations is not a candidate.
    return [n.name for n in model.graph.node
            if n.op_type in GUARD_OP_TYPES and len(n.input) > 1 and n.input[1] in inits]


def _input_name(model_path: Path) -> str:
    import onnx

    model = onnx.load(str(model_path))
    inits = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    if len(names) != 1:
        raise InputError(f"{model_path}: static quantization expects exactly one image input, found {names}")
    return names[0]


def _run_quantizer(model: Path, out: Path, calib_x: np.ndarray, input_name: str, cfg: Any,
                   exclude: Sequence[str], reduce_range: bool = False) -> None:
    from onnxruntime.quantization import QuantFormat, quantize_static as ort_quantize_static

    reader = ImageCalibrationReader(calib_x, input_name, batch_size=1)
    ort_quantize_static(
        str(model), str(out), reader,
        quant_format=QuantFormat.QDQ,
        per_channel=bool(cfg.per_channel),
        activation_type=_quant_type(cfg.activation_type),
        weight_type=_quant_type(cfg.weight_type),
        calibrate_method=_calib_method(cfg.calibrate_method),
        nodes_to_exclude=list(exclude),
        reduce_range=bool(reduce_range),
    )


def quantize_static(fp32_onnx: str | Path, out_path: str | Path, calib_x: np.ndarray, cfg: Any,
                    eval_fn: Callable[[Path], float] | None = None, fp32_accuracy: float | None = None,
                    max_guard_candidates: int = 32, target: Any = None, progress: bool = False,
                    predict_fn: Callable[[Path], np.ndarray] | None = None,
                    check_fn: Callable[[Path], float] | None = None) -> dict[str, Any]:
    """Quantize an fp32 ONNX model to int8 QDQ with real calibration images; optional accuracy guard.

    Args:
        fp32_onnx: the fp32 model (opset >= 13, one image input).
        out_path: where the QDQ model goes; written atomically (temp file in the same folder, then ``os.replace``).
        calib_x: float32 images (N, C, H, W), preprocessed like the model's inputs; the first ``cfg.calib_size`` are used.
        cfg: ``QuantizeConfig`` (activation_type, weight_type, per_channel, calibrate_method, calib_size, max_drop,
            weight_bits, size_budget, reduce_range).
        eval_fn: accuracy of a model file on held-out data (higher is better); enables the guard with ``fp32_accuracy``.
        fp32_accuracy: accuracy of ``fp32_onnx`` under the same ``eval_fn``.
        max_guard_candidates: cap on nodes measured for sensitivity (each costs one quantization + one evaluation).
        target: optional benchmark target; with ``reduce_range = "auto"`` an ARM (not measured here) target keeps
            full-range weights, otherwise this host's ISA decides (:func:`pipeline.quantize.isa.resolve_reduce_range`).
        progress: log one line per calibration pass (each quantizer run calibrates on every image; the accuracy
            guard adds passes), so a long quantize stage shows it is moving.
        predict_fn: outputs of a model file on a fixed probe batch; with ``weight_bits="auto"`` and no size budget
            the per-layer widths are fitted (needs the guard's ``eval_fn`` and ``fp32_accuracy`` too): with
            ``check_fn``, its accuracy >= that of the 8-bit int8 model - cfg.weight_drop (the int8 model must hold
            validation accuracy >= fp32 accuracy - cfg.max_drop to be narrowed at all); without it, validation
            accuracy >= max(int8 accuracy - cfg.weight_drop, fp32 accuracy - cfg.max_drop).
        check_fn: accuracy of a model file on the check images (validation plus training images, labelled).

    Returns:
        ``{"excluded_nodes", "calibrated_on", "preprocessed", "activation_type", "weight_type", "per_channel",
        "calibrate_method", "reduce_range": {setting, applied, weight_qmax, host_isa}, "quantized_tensors",
        "names": {renamed, nodes_unnamed, skipped} (:func:`pipeline.quantize.names.compact_names`), "guard": {...},
        "weight_bits": {...} | None}``.
    """
    import onnx

    fp32_onnx = Path(fp32_onnx)
    out_path = Path(out_path)
    if not fp32_onnx.is_file():
        raise InputError(f"fp32 model {fp32_onnx} does not exist; run the quantize stage on an exported model")
    calib_x = np.asarray(calib_x)
    n_cal = min(int(cfg.calib_size), len(calib_x))
    if n_cal < 1:
        raise InputError("quantize_static needs at least one calibration image; the training split is empty")
    calib = calib_x[:n_cal].astype(np.float32, copy=False)
    _quant_type(cfg.activation_type), _quant_type(cfg.weight_type), _calib_method(cfg.calibrate_method)
    isa = host_isa()
    reduce_range = resolve_reduce_range(getattr(cfg, "reduce_range", "auto"), cfg.weight_type, isa, target)
    guard_on = eval_fn is not None and fp32_accuracy is not None
    out_path.parent.mkdir(parents=True, exist_ok=True)

    work = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.", dir=out_path.parent))
    try:
        model, pre_ok = _prepare(fp32_onnx, work)
        input_name = _input_name(model)
        counter = [0]

        def attempt(exclude: Sequence[str]) -> Path:
            counter[0] += 1
            p = work / f"q{counter[0]}.onnx"
            t0 = time.monotonic()
            _run_quantizer(model, p, calib, input_name, cfg, exclude, reduce_range)
            if progress:
                log.info("quantize: calibration pass %d (%d images, %d node(s) kept float) done in %.1fs",
                         counter[0], n_cal, len(exclude), time.monotonic() - t0)
            return p

        best = attempt([])
        excluded: list[str] = []
        guard: dict[str, Any] = {"enabled": guard_on, "max_drop": float(cfg.max_drop)}
        if guard_on:
            assert eval_fn is not None and fp32_accuracy is not None
            acc = float(eval_fn(best))
            guard.update(fp32_accuracy=float(fp32_accuracy), int8_accuracy_all=acc)
            if fp32_accuracy - acc > cfg.max_drop:
                cands = _candidate_nodes(model)[:max_guard_candidates]
                # Sensitivity = accuracy regained when this node alone stays float (ties: graph order, deterministic).
                sens = {n: float(eval_fn(attempt([n]))) - acc for n in cands}
                ranked = sorted(cands, key=lambda n: -sens[n])
                guard["sensitivity"] = {n: sens[n] for n in ranked}
                for n in ranked:
                    excluded.append(n)
                    p = attempt(excluded)
                    acc = float(eval_fn(p))
                    best = p
                    if fp32_accuracy - acc <= cfg.max_drop:
                        break
            guard.update(int8_accuracy=acc, drop=float(fp32_accuracy - acc), met=bool(fp32_accuracy - acc <= cfg.max_drop),
                         attempts=counter[0])
        wb_info = None
        if str(cfg.weight_bits) != "8":
            wb_path = work / "lowbit.onnx"
            floor = None
            weight_drop = float(getattr(cfg, "weight_drop", 0.0))
            if guard_on:  # never beyond max_drop from fp32; against int8: weight_drop on the check set (or on val)
                floor = float(guard["fp32_accuracy"]) - float(cfg.max_drop)
                if check_fn is None:
                    floor = max(float(guard["int8_accuracy"]) - weight_drop, floor)
            t0 = time.monotonic()
            wb_info = apply_weight_bits_to_qdq(best, wb_path, cfg.weight_bits, eval_fn=eval_fn,
                                               size_budget=cfg.size_budget, qmax=64 if reduce_range else 127,
                                               predict_fn=predict_fn, floor=floor,
                                               fit_seconds=float(getattr(cfg, "fit_seconds", 120.0)),
                                               check_fn=check_fn, check_drop=weight_drop,
                                               grid=resolve_grid(str(getattr(cfg, "weight_grid", "auto")),
                                                                 int(getattr(cfg, "qat_epochs", 0))))
            if progress:
                log.info("quantize: weight widths %s: average %.2f bits/weight in %.1fs", cfg.weight_bits,
                         wb_info["avg_bits"] or 8.0, time.monotonic() - t0)
            best = wb_path
        qmodel = onnx.load(str(best))
        quantized = sorted({n.input[0] for n in qmodel.graph.node if n.op_type == "QuantizeLinear"})
        # short internal names: on small networks the quantizer's long tensor names are a fifth of the container
        names = compact_names(qmodel)
        # Atomic publish: the final bytes go to a temp file in the destination folder, then os.replace.
        tmp = out_path.parent / f".{out_path.name}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(qmodel.SerializeToString())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "excluded_nodes": excluded,
        "calibrated_on": n_cal,
        "preprocessed": pre_ok,
        "activation_type": cfg.activation_type,
        "weight_type": cfg.weight_type,
        "per_channel": bool(cfg.per_channel),
        "calibrate_method": cfg.calibrate_method,
        "reduce_range": {"setting": str(getattr(cfg, "reduce_range", "auto")), "applied": reduce_range,
                         "weight_qmax": 64 if reduce_range else 127, "host_isa": isa},
        "quantized_tensors": len(quantized),
        "names": names,
        "guard": guard,
        "weight_bits": wb_info,
    }
