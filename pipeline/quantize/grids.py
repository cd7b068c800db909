"""The b-bit grids inside int8 that the weight-width fit snaps a QDQ model's weights onto, and what they cost.

A grid keeps the graph int8: new int8 values are ``m * j`` (``j`` in ``-L..L``, ``L = 2**(b-1) - 1``, ``m`` a power
of two with ``m * L <= qmax``) with scale ``s_b / m``, so DequantizeLinear yields ``j * s_b`` exactly. The step
``s_b`` is one per tensor (``layer``), a power of two apart per channel (``octave``) or one per channel
(``channel``), see :func:`snap`. :func:`side_bits` is what a grid's scales and bias scales cost in the container.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from pipeline.errors import ConfigError

def fp16_exact(x: np.ndarray) -> np.ndarray:
    """Round positive scales to float16 when that is harmless (normal fp16 range), else keep float32."""
    x = np.asarray(x, dtype=np.float32)
    h = x.astype(np.float16).astype(np.float32)
    # Subnormal/overflowing fp16 would cost > 0.1% precision: keep those scales exact in float32.
    ok = (np.abs(x) >= np.float32(6.2e-5)) & (np.abs(x) <= np.float32(6.0e4))
    return np.where(ok, h, x).astype(np.float32)


def weight_qmax(arrays: Sequence[np.ndarray]) -> int:
    """The symmetric int8 range ORT quantized the weights to: 64 under ``reduce_range`` (7 bits), else 127.

    MinMax symmetric quantization puts each channel's (or tensor's) largest magnitude on the range end, so the
    largest |q| over all weights reveals the range.
    """
    top = max((int(np.abs(a.astype(np.int32)).max()) for a in arrays if a.size), default=127)
    return 64 if top <= 64 else 127


def grid_multiplier(bits: int, qmax: int = 127) -> int:
    """The int8 step ``m`` of a b-bit grid inside [-qmax, qmax]: the largest power of two with ``m * L <= qmax``.

    A power of two keeps the new scale ``s_b / m`` float16-exact when ``s_b`` is, so the container stores the scales
    in half the bytes (the largest integer multiplier would make them arbitrary float32 values).
    """
    lvl = min(2 ** (bits - 1) - 1, qmax)
    return 1 << max(int(np.floor(np.log2(max(qmax // lvl, 1)))), 0)


GRIDS = ("layer", "octave", "channel")

#: "octave" grids: a channel's step is the layer's step divided by 2**k, k = 0..OCTAVES
OCTAVES = 6


def snap(q: np.ndarray, scale: np.ndarray, axis: int, bits: int, qmax: int = 127,
          grid: str = "layer") -> tuple[np.ndarray, np.ndarray]:
    """int8 values ``q`` (per-channel ``scale`` along ``axis``, or per-tensor) onto a b-bit grid inside [-qmax, qmax].

    ``grid``: "channel" gives every output channel its own step (its largest weight on the outermost level);
    "layer" gives the whole tensor one step (the layer's largest weight on the outermost level), written into every
    channel's scale; "octave" gives each channel the layer's step divided by the power of two that brings its
    largest weight closest to the outermost level without passing it. For a given coded size the squared weight
    error is smallest when every weight of a layer sees the same step (channels with small weights then use few,
    very probable levels instead of a fine grid of their own), and equal scales (and so equal bias scales) cost
    almost nothing in the container; octave steps keep most of a per-channel grid's resolution for channels of
    small weights while their scales (and bias scales) take a handful of distinct values.

    The grid must stay inside the range the weights were quantized to: under reduce_range (qmax 64) a value beyond
    it brings back the U8S8 int16 saturation the 7-bit range avoids.
    """
    if grid not in GRIDS:
        raise ConfigError(f"weight grid {grid!r} unknown; use one of {', '.join(GRIDS)}")
    lvl = min(2 ** (bits - 1) - 1, qmax)  # 8-bit levels inside a 7-bit range: the grid is the range itself
    m = grid_multiplier(bits, qmax)
    per_channel = scale.ndim == 1 and scale.size > 1
    qc = np.moveaxis(q, axis, 0).reshape(q.shape[axis], -1).astype(np.int32) if per_channel else q.reshape(1, -1)
    s = scale.reshape(-1).astype(np.float32)
    amax = np.maximum(np.abs(qc).max(1), 1)
    if grid != "channel" and per_channel:
        # the largest real-valued weight of the tensor, over all channels
        real = amax.astype(np.float64) * s.astype(np.float64)
        top = float(np.max(real))
        step = float(fp16_exact(np.asarray([top / lvl]))[0])
        k = np.zeros(len(s))
        if grid == "octave":  # step / 2**k with the channel's largest weight still on or inside the outermost level
            k = np.clip(np.floor(np.log2(top / np.maximum(real, top * 2.0 ** -OCTAVES))), 0, OCTAVES)
        s_b = (step * 2.0 ** -k).astype(np.float32)  # powers of two: exact, fp16 wherever the layer's step is
    else:
        s_b = fp16_exact(s * amax / lvl)  # real-valued step of the b-bit grid, fp16 for compact storage
    j = np.clip(np.round(qc * (s / s_b)[:, None]), -lvl, lvl)
    new_q = (j * m).astype(np.int8)
    new_s = (s_b / np.float32(m)).astype(np.float32)
    shaped = np.moveaxis(new_q.reshape(np.moveaxis(q, axis, 0).shape), 0, axis) if per_channel else new_q.reshape(q.shape)
    return shaped, new_s.reshape(scale.shape)


def side_bits(channels: int, has_bias: bool, bits: int, grid: str) -> int:
    """Coded bits of a weight tensor's scales and its bias scales, roughly as the container stores them.

    ORT's 8-bit scales (and the bias scales derived from them) are arbitrary float32 values, one per channel;
    snapped grids have float16-exact weight scales (:func:`grid_multiplier`), one per channel ("channel") or one
    value repeated ("layer": the repeats, and the equal bias scales, code to almost nothing).
    """
    if bits >= 8:
        return channels * 32 * (2 if has_bias else 1)
    if grid == "channel":
        return channels * (16 + (32 if has_bias else 0))
    if grid == "octave":  # one step, then about 2 bits per channel for its power of two (bias scales alike)
        return 16 + 2 * channels + ((32 + 2 * channels) if has_bias else 0)
    return 16 + (32 if has_bias else 0)


def deq(q: np.ndarray, scale: np.ndarray, axis: int) -> np.ndarray:
    """DequantizeLinear with zero point 0 (per-channel along ``axis`` or per-tensor), in float64."""
    s = scale.astype(np.float64)
    if s.ndim == 1 and s.size > 1:
        shape = [1] * q.ndim
        shape[axis] = s.size
        s = s.reshape(shape)
    return q.astype(np.float64) * s


def resolve_grid(setting: str, qat_epochs: int = 0) -> str:
    """``quantize.weight_grid`` as used: "auto" is the layer grid, or the channel grid after a quantization-aware
    finetune (which trains one step per output channel, so the snap must keep those steps)."""
    if setting == "auto":
        return "channel" if qat_epochs > 0 else "layer"
    if setting not in GRIDS:
        raise ConfigError(f"quantize.weight_grid {setting!r} unknown; use auto or one of {', '.join(GRIDS)}")
    return setting
