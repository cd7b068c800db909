"""Artifact sizes include every external-data file an ONNX model references, and unsafe references are refused."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from benchmarks.storage import artifact_bytes, external_data_files
from pipeline.errors import InputError


def _gemm_model() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.arange(64 * 32, dtype=np.float32).reshape(64, 32), "w")
    b = numpy_helper.from_array(np.ones(32, np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])], [w, b],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_plain_file_size(tmp_path: Path) -> None:
    p = tmp_path / "model.onnx"
    onnx.save(_gemm_model(), str(p))
    assert artifact_bytes(p) == p.stat().st_size
    other = tmp_path / "weights.lrdc"
    other.write_bytes(b"x" * 123)
    assert artifact_bytes(other) == 123


def test_external_data_is_counted(tmp_path: Path) -> None:
    p = tmp_path / "model.onnx"
    onnx.save(_gemm_model(), str(p), save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data", size_threshold=0)
    data = tmp_path / "model.onnx.data"
    assert data.is_file() and data.stat().st_size >= 64 * 32 * 4
    assert external_data_files(p) == [data.resolve()]
    assert artifact_bytes(p) == p.stat().st_size + data.stat().st_size
    assert artifact_bytes(p) > p.stat().st_size
    # a folder counts every file in it once
    assert artifact_bytes(tmp_path) == p.stat().st_size + data.stat().st_size


def _with_location(tmp_path: Path, location: str) -> Path:
    model = _gemm_model()
    for t in model.graph.initializer:
        t.ClearField("raw_data")
        del t.float_data[:]
        t.data_location = TensorProto.EXTERNAL
        t.external_data.add(key="location", value=location)
    p = tmp_path / "sub" / "model.onnx"
    p.parent.mkdir(exist_ok=True)
    p.write_bytes(model.SerializeToString())
    return p


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/hostname", "missing.bin"])
def test_unsafe_or_missing_external_data_is_refused(tmp_path: Path, location: str) -> None:
    (tmp_path / "outside.bin").write_bytes(b"\0" * 16)
    p = _with_location(tmp_path, location)
    with pytest.raises(InputError):
        artifact_bytes(p)


def test_symlinked_external_data_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "real.bin"
    target.write_bytes(b"\0" * 16)
    p = _with_location(tmp_path, "link.bin")
    (p.parent / "link.bin").symlink_to(target)
    with pytest.raises(InputError, match="symlink"):
        artifact_bytes(p)


def test_missing_artifact(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        artifact_bytes(tmp_path / "nope.onnx")
