"""The ONNX graph fallback's model side: which files become graph-only models, the errors for files that cannot be
used at all, the ORT-run wrapper (copies, fixed batch), its checkpoint form and its export."""
from __future__ import annotations

import copy
import pickle
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from pipeline.errors import InputError
from pipeline.models import load_onnx_model, onnx_model_info
from pipeline.models.onnx import OnnxGraphModule
from pipeline.models.ort_graph import OrtGraphModel
from tests.helpers.ort import session

SHAPE = (3, 8, 8)


def _graph(path: Path, act: str = "Elu", batch: int | str = "n", classes: int | None = 5,
           reshape_to: list[int] | None = None, domain: str = "") -> Path:
    """Conv -> act -> GlobalAveragePool -> Reshape -> Gemm; ``reshape_to`` bakes a shape into the Reshape."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array(reshape_to or [0, -1], np.int64), "shape"),
             numpy_helper.from_array(rng.standard_normal((5, 4)).astype(np.float32), "fc")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node(act, ["c"], ["a"], name="act", domain=domain),
             helper.make_node("GlobalAveragePool", ["a"], ["g"], name="gap"),
             helper.make_node("Reshape", ["g", "shape"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc"], ["y"], name="head", transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *SHAPE])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, classes])], inits)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_supported_graph_is_converted_to_torch(tmp_path: Path) -> None:
    model, why = load_onnx_model(str(_graph(tmp_path / "m.onnx", act="Relu")), SHAPE)
    assert isinstance(model, OnnxGraphModule) and why is None


def test_unsupported_standard_op_falls_back_to_the_graph(tmp_path: Path) -> None:
    path = _graph(tmp_path / "m.onnx", act="Elu")
    model, why = load_onnx_model(str(path), SHAPE)
    assert isinstance(model, OrtGraphModel) and "Elu" in why and "'act'" in why
    x = torch.randn(3, *SHAPE)
    sess = session(str(path))
    np.testing.assert_array_equal(model(x).numpy(), sess.run(None, {"x": x.numpy()})[0])
    assert list(model.parameters()) == [] and model.state_dict() == {}


def test_custom_domain_is_still_rejected_naming_the_op(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"com\.example.*FancyAct"):
        load_onnx_model(str(_graph(tmp_path / "m.onnx", act="FancyAct", domain="com.example")), SHAPE)


def test_graph_onnx_runtime_cannot_run_names_the_ops_and_the_runtime_error(tmp_path: Path) -> None:
    # The Reshape bakes a size that does not fit: valid for the checker, fails when ORT runs it.
    path = _graph(tmp_path / "m.onnx", act="Elu", reshape_to=[2, -1])
    with pytest.raises(InputError, match=r"cannot convert it .*Elu.*ONNX Runtime cannot run it") as exc:
        load_onnx_model(str(path), SHAPE)
    assert "re-export" in str(exc.value)


def test_model_info_probes_undeclared_classes_with_onnx_runtime(tmp_path: Path) -> None:
    info = onnx_model_info(_graph(tmp_path / "m.onnx", act="Elu", classes=None, batch=1))
    assert info["num_classes"] == 5 and info["in_channels"] == 3 and info["input_size"] == 8


def test_wrapper_copies_pickles_and_chunks_a_fixed_batch(tmp_path: Path) -> None:
    model, _ = load_onnx_model(str(_graph(tmp_path / "m.onnx", act="Elu", batch=2)), SHAPE)
    x = torch.randn(5, *SHAPE)  # 5 samples through a graph fixed at batch 2: chunks of 2, the tail padded
    y = model(x)
    assert y.shape == (5, 5)
    clone = copy.deepcopy(model)
    assert clone._session is None and torch.equal(clone(x), y)
    again = pickle.loads(pickle.dumps(model))
    torch.testing.assert_close(again(x[:1]), y[:1])


def test_graph_checkpoint_round_trip(tmp_path: Path) -> None:
    from pipeline.checkpoint import load_model, save_model

    model, _ = load_onnx_model(str(_graph(tmp_path / "m.onnx")), SHAPE)
    from pipeline.card import ModelCard

    card = ModelCard(spec="m.onnx", num_classes=5, in_channels=3, input_size=8, mean=(0.0,) * 3, std=(1.0,) * 3)
    files = save_model(model, card, tmp_path / "ck")
    assert files == ["model.onnx", "model.json"]
    back, card = load_model(tmp_path / "ck")
    assert isinstance(back, OrtGraphModel) and card.form == "onnx_graph"
    x = torch.randn(2, *SHAPE)
    assert torch.equal(back(x), model(x))


@pytest.mark.parametrize("batch, baked, dynamic", [(1, None, True), (1, [1, 4], False), ("n", None, True)])
def test_export_of_a_graph_model(tmp_path: Path, batch: int | str, baked: list[int] | None, dynamic: bool) -> None:
    from exporters.onnx import export_onnx
    from exporters.validate import check_parity

    model, _ = load_onnx_model(str(_graph(tmp_path / "m.onnx", batch=batch, reshape_to=baked)), SHAPE)
    info = export_onnx(model, SHAPE, tmp_path / "out.onnx", opset=17, simplify=True)
    assert info["dynamic_batch"] is dynamic and info["input_name"] == "x" and info["output_name"] == "y"
    out = onnx.load(str(tmp_path / "out.onnx"))
    onnx.checker.check_model(out, full_check=True)
    assert "Elu" in {n.op_type for n in out.graph.node}
    batches = [np.random.default_rng(0).standard_normal((b, *SHAPE)).astype(np.float32)
               for b in ((1, 4) if dynamic else (1,))]
    parity = check_parity(model, tmp_path / "out.onnx", batches)
    assert all(b["max_abs"] < 1e-5 for b in parity["batches"])


@pytest.mark.parametrize("act", ["Relu", "Elu"])  # the torch importer and the ONNX Runtime probe
def test_model_info_probes_at_the_given_non_square_size(tmp_path: Path, act: str) -> None:
    """A graph that only runs at 6x10 (the head's width is baked in) with dynamic spatial axes and no declared class
    count: the 224x224 default probe fails with a message naming the shape; probing at the data's size works."""
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(
                 rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")),
             helper.make_node("Constant", [], ["fc"], value=numpy_helper.from_array(
                 rng.standard_normal((7, 4 * 6 * 10)).astype(np.float32), "fc")),
             helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([1, -1], np.int64),
                                                                                        "shape")),
             helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node(act, ["c"], ["a"], name="act"),
             helper.make_node("Reshape", ["a", "shape"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc"], ["y"], name="head", transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "wide.onnx"
    onnx.save(model, str(path))
    with pytest.raises(InputError, match=r"\(1, 3, 224, 224\)"):
        onnx_model_info(path)
    info = onnx_model_info(path, probe_hw=(6, 10))
    assert info["num_classes"] == 7 and info["input_size"] is None
