"""ONNX file safety (pipeline.models.onnx.validate): missing, truncated and non-ONNX files, the 2 GiB protobuf cap,
custom-op domains, external-data locations (inside the folder, absolute, '..', symlinks) and NaN weights."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from pipeline.errors import InputError, NumericalError
from pipeline.models import build_model
from pipeline.models.onnx import check_onnx_file, onnx_to_torch
from tests.helpers.ort import session


def _save(graph: onnx.GraphProto, path: Path, opset: int = 17) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(arr, name)


def test_custom_domain_is_rejected(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("FancyAct", ["x"], ["y"], name="fancy", domain="com.example")], "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.example", 1)])
    path = tmp_path / "custom.onnx"
    onnx.save(model, str(path))
    with pytest.raises(InputError, match="com.example"):
        onnx_to_torch(path)


def test_missing_truncated_and_non_onnx_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nope.onnx"):
        check_onnx_file(tmp_path / "nope.onnx")
    w = np.ones((8, 3, 3, 3), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "ok",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, "h", "w"])], [_init("w", w)])
    data = _save(graph, tmp_path / "ok.onnx").read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="not a valid ONNX model"):
        onnx_to_torch(truncated)
    text = tmp_path / "readme.onnx"
    text.write_text("this is not a model\n" * 20)
    with pytest.raises(InputError, match="not a valid ONNX model"):
        onnx_to_torch(text)
    with pytest.raises(InputError, match="not a valid ONNX model"):
        build_model(str(text), 10, 3, 32)


def test_over_two_gib_single_file_is_rejected_clearly(tmp_path: Path) -> None:
    big = tmp_path / "big.onnx"
    with open(big, "wb") as f:  # sparse file: no real disk use
        f.truncate(2**31 + 16)
    with pytest.raises(InputError, match="2 GiB.*external data"):
        check_onnx_file(big)


def _external_model(folder: Path, location: str) -> tuple[Path, np.ndarray]:
    """A one-Conv model whose weight lives in external data at ``location`` (written as raw float32)."""
    w = np.random.default_rng(0).standard_normal((2, 3, 1, 1)).astype(np.float32)
    tensor = numpy_helper.from_array(w, "w")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(w.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = k, v
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "ext",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2, "h", "w"])],
        [tensor],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path, w


def test_external_data_inside_the_folder_loads(tmp_path: Path) -> None:
    path, w = _external_model(tmp_path, "weights.bin")
    (tmp_path / "weights.bin").write_bytes(w.tobytes())
    module = onnx_to_torch(path)
    torch.testing.assert_close(module.get_submodule("conv").weight, torch.from_numpy(w))
    x = torch.randn(2, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    sess = session(str(path))
    with torch.no_grad():
        np.testing.assert_allclose(module(x).numpy(), sess.run(None, {"x": x.numpy()})[0], atol=1e-5)


@pytest.mark.parametrize("kind, why", [("abs", "absolute"), ("dotdot", "escapes"), ("link", "symlink")])
def test_external_data_escapes_are_rejected(tmp_path: Path, kind: str, why: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    w = np.zeros((2, 3, 1, 1), dtype=np.float32)
    (outside / "secret.bin").write_bytes(w.tobytes())
    location = {"abs": str(outside / "secret.bin"), "dotdot": "../outside/secret.bin", "link": "weights.bin"}[kind]
    folder = tmp_path / kind
    folder.mkdir()
    path, _ = _external_model(folder, location)
    if kind == "link":
        os.symlink(outside / "secret.bin", folder / "weights.bin")
    with pytest.raises(InputError, match=why) as exc:
        check_onnx_file(path)
    assert "'w'" in str(exc.value) and location in str(exc.value)


def test_nan_initializer_is_a_numerical_error(tmp_path: Path) -> None:
    w = np.ones((2, 3, 1, 1), dtype=np.float32)
    w[1, 2, 0, 0] = np.nan
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "bad_weight"], ["y"], name="conv")], "nan",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2, "h", "w"])],
        [_init("bad_weight", w)],
    )
    path = _save(graph, tmp_path / "nan.onnx")
    with pytest.raises(NumericalError, match="bad_weight"):
        onnx_to_torch(path)


def test_nan_in_a_constant_node_is_a_numerical_error(tmp_path: Path) -> None:
    w = np.ones((2, 3, 1, 1), dtype=np.float32)
    w[0, 0, 0, 0] = np.inf
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["cw"], name="weights", value=numpy_helper.from_array(w, "cw")),
         helper.make_node("Conv", ["x", "cw"], ["y"], name="conv")], "inf",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2, "h", "w"])])
    with pytest.raises(NumericalError, match="cw"):
        onnx_to_torch(_save(graph, tmp_path / "inf.onnx"))
