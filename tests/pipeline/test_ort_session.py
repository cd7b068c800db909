"""``make_session``: the one ORT session builder (threads, providers, optimization level, .ort files, profiling)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from pipeline.errors import ConfigError, InputError
from pipeline.ort_session import make_session


def _relu_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_path_and_bytes_give_the_same_outputs(tmp_path: Path) -> None:
    m = _relu_model()
    path = tmp_path / "m.onnx"
    path.write_bytes(m.SerializeToString())
    x = np.array([[-1.0, 0.5, -2.0, 3.0]], np.float32)
    a = make_session(path).run(None, {"x": x})[0]
    b = make_session(m.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(a, np.maximum(x, 0))
    np.testing.assert_array_equal(a, b)


def test_settings_are_applied(tmp_path: Path) -> None:
    s = make_session(_relu_model().SerializeToString(), threads=2, opt_level="basic", inter_threads=1)
    so = s.get_session_options()
    assert so.intra_op_num_threads == 2 and so.inter_op_num_threads == 1
    assert str(so.graph_optimization_level).endswith("ENABLE_BASIC")
    assert s.get_providers() == ["CPUExecutionProvider"]


def test_profile_writes_a_trace(tmp_path: Path) -> None:
    s = make_session(_relu_model().SerializeToString(), profile=tmp_path / "prof")
    s.run(None, {"x": np.zeros((1, 4), np.float32)})
    trace = Path(s.end_profiling())
    assert trace.parent == tmp_path / "prof" and trace.is_file()


@pytest.mark.parametrize("kw, match", [
    ({"opt_level": "fastest"}, "optimization level 'fastest'"),
    ({"execution_mode": "async"}, "execution mode 'async'"),
    ({"providers": ("NoSuchExecutionProvider",)}, "NoSuchExecutionProvider"),
])
def test_bad_settings_are_config_errors(kw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make_session(_relu_model().SerializeToString(), **kw)


def test_missing_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="missing.onnx"):
        make_session(tmp_path / "missing.onnx")
