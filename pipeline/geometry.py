"""The input geometry of a run, resolved once: ``(H, W)`` from the ONNX model's declared input when it fixes it,
else from ``dataset.input_size``, else the size the dataset stores (a dynamic-axis model then runs at that size).

Every later probe (class count, heads, MACs, shape inference, calibration, example inputs) reads the geometry from
the model card the baseline stage writes from the loaded data, so it is decided here and nowhere else.
"""
from __future__ import annotations

from pipeline.config import PipelineConfig
from pipeline.errors import ConfigError
from pipeline.models.onnx.info import declared_input_hw
from pipeline.spec import ModelSpec


def resolve_input_size(cfg: PipelineConfig) -> tuple[int, int] | None:
    """``(H, W)`` the dataset is loaded at, or None for the dataset's natural size.

    Raises:
        ConfigError: ``dataset.input_size`` contradicts the ONNX model's fixed input.
    """
    want = None if cfg.dataset.input_size is None else (int(cfg.dataset.input_size[0]), int(cfg.dataset.input_size[1]))
    if not ModelSpec.parse(cfg.model).is_onnx:
        return want
    fixed = declared_input_hw(cfg.model)
    if fixed is None:
        return want
    if want is not None and want != fixed:
        raise ConfigError(f"dataset.input_size={list(want)} but ONNX model {cfg.model!r} fixes its input to "
                          f"{list(fixed)} (H, W); drop dataset.input_size (images are then resized to the model's "
                          f"input) or set it to {list(fixed)}")
    return fixed
