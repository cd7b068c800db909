"""ONNX as exported in the wild: weights in Constant nodes (paddle2onnx / tf2onnx style), opsets 7-21, fp16
weights, shared initializers, dynamic batch and spatial axes. A torch-exported dense-map net (ConvTranspose, Resize,
LayerNorm, GELU, SiLU, Split, MatMul) is imported at opset 11 and 18, checked against ONNX Runtime and finetuned."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from pipeline.config import FactorizeConfig
from pipeline.errors import InputError
from pipeline.factorize.onnx_graph import factorize_graph
from pipeline.models.onnx import fold_constant_nodes, load_for_import, onnx_to_torch
from pipeline.models.ort_graph import load_graph_model
from tests.helpers.ort import session


class DenseMapNet(nn.Module):
    """A tiny segmentation-style net: encoder, LayerNorm over channels, ConvTranspose + Resize decoder."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.mid = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.ln = nn.LayerNorm(16)
        self.up = nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1)
        self.mix = nn.Linear(8, 8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.silu(self.bn(self.stem(x)))                                    # Sigmoid * x
        y = F.hardswish(self.mid(y))
        y = self.ln(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)               # opset 11: ReduceMean/Pow/Sqrt
        y = F.gelu(self.up(y))                                               # ConvTranspose, Erf
        y = self.mix(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)              # MatMul + Add on channels-last
        a, b = torch.split(y, [3, 5], dim=1)
        y = torch.cat([a, torch.sigmoid(b)], dim=1)
        y = F.interpolate(y, scale_factor=2, mode="nearest")                 # Resize nearest
        y = F.interpolate(y, scale_factor=0.5, mode="bilinear", align_corners=False)  # Resize linear
        return torch.softmax(self.head(y), dim=1)                            # a 2-class probability map


def _to_constant_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Move every initializer into a Constant node at the front of the graph, as paddle2onnx writes weights."""
    consts = [helper.make_node("Constant", [], [t.name], value=t) for t in model.graph.initializer]
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(consts + nodes)
    del model.graph.initializer[:]
    return model


@pytest.fixture(scope="module")
def dense_files(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    torch.manual_seed(0)
    net = DenseMapNet().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.2, 0.2)
        net.bn.running_var.uniform_(0.5, 1.5)
    out: dict[int, Path] = {}
    for opset in (11, 18):
        path = tmp_path_factory.mktemp("dense") / f"dense{opset}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (torch.randn(1, 3, 16, 16),), str(path), dynamo=False, opset_version=opset,
                              training=torch.onnx.TrainingMode.PRESERVE,  # keep BatchNormalization nodes
                              input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "y": {0: "n", 2: "h", 3: "w"}})
        onnx.save(_to_constant_nodes(onnx.load(str(path))), str(path))
        out[opset] = path
    return out


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    sess = session(str(path))
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("opset", [11, 18])
def test_constant_node_dense_net_matches_onnxruntime(dense_files: dict[int, Path], opset: int) -> None:
    path = dense_files[opset]
    raw = onnx.load(str(path))
    assert len(raw.graph.initializer) == 0 and sum(n.op_type == "Constant" for n in raw.graph.node) >= 10
    ops = {n.op_type for n in raw.graph.node}
    assert {"ConvTranspose", "Resize", "Erf", "MatMul", "Split"} <= ops
    assert ("LayerNormalization" in ops) if opset == 18 else {"Pow", "Sqrt", "ReduceMean"} <= ops
    model = onnx_to_torch(path)
    names = {type(m).__name__ for m in model.children()}
    assert {"Conv2d", "ConvTranspose2d", "Linear", "BatchNorm2d"} <= names
    assert ("LayerNorm" in names) == (opset == 18)
    gen = torch.Generator().manual_seed(3)
    for batch, (h, w) in ((1, (16, 16)), (2, (16, 24))):  # dynamic batch and non-square spatial axes
        x = torch.randn(batch, 3, h, w, generator=gen)
        with torch.no_grad():
            y = model(x)
        np.testing.assert_allclose(y.numpy(), _ort(path, x.numpy()), atol=1e-4, rtol=1e-4)


def test_imported_dense_net_finetunes(dense_files: dict[int, Path]) -> None:
    model = onnx_to_torch(dense_files[18]).train()
    params = dict(model.named_parameters())
    assert any("ConvTranspose" in k or "up" in k.lower() for k in params)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    target = (F.avg_pool2d(x[:, :1], 2) > 0).float().expand(-1, 2, -1, -1).clone()  # the map is at half size
    target[:, 1] = 1 - target[:, 0]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = F.binary_cross_entropy(model(x), target)
        loss.backward()
        losses.append(loss.item())
        assert all(p.grad is not None for p in params.values())
        opt.step()
    assert losses[-1] < losses[0]


def test_reexported_dense_net_stays_dynamic(dense_files: dict[int, Path], tmp_path: Path) -> None:
    model = onnx_to_torch(dense_files[11])
    out = tmp_path / "again.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 16, 16),), str(out), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "y": {0: "n", 2: "h", 3: "w"}})
    for batch, (h, w) in ((1, (16, 16)), (3, (24, 32))):
        x = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            np.testing.assert_allclose(_ort(out, x.numpy()), model(x).numpy(), atol=1e-4, rtol=1e-4)


def test_fold_constant_nodes_keeps_onnxruntime_outputs(dense_files: dict[int, Path], tmp_path: Path) -> None:
    model = onnx.load(str(dense_files[11]))
    n_const = sum(n.op_type == "Constant" for n in model.graph.node)
    assert fold_constant_nodes(model) == n_const
    assert not any(n.op_type == "Constant" for n in model.graph.node)
    folded = tmp_path / "folded.onnx"
    onnx.save(model, str(folded))
    onnx.checker.check_model(str(folded), full_check=True)
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(_ort(folded, x), _ort(dense_files[11], x))


def _elu_net(path: Path) -> Path:
    """Stem conv -> Elu (outside the importer: the graph path) -> 32x32 conv -> head, weights as Constant nodes."""
    rng = np.random.default_rng(0)

    def const(name: str, arr: np.ndarray) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(arr, name))

    nodes = [const("w1", rng.standard_normal((32, 3, 3, 3)).astype(np.float32) * 0.3),
             const("w2", rng.standard_normal((32, 32, 3, 3)).astype(np.float32) * 0.1),
             const("shape", np.array([0, -1], np.int64)),
             const("fc", rng.standard_normal((5, 32)).astype(np.float32)),
             helper.make_node("Conv", ["x", "w1"], ["c1"], name="stem", pads=[1, 1, 1, 1]),
             helper.make_node("Elu", ["c1"], ["a1"], name="act"),
             helper.make_node("Conv", ["a1", "w2"], ["c2"], name="body", pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c2"], ["g"], name="gap"),
             helper.make_node("Reshape", ["g", "shape"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc"], ["y"], name="head", transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_graph_path_sees_constant_node_weights_as_initializers(tmp_path: Path) -> None:
    path = _elu_net(tmp_path / "elu.onnx")
    model = load_graph_model(path, (3, 8, 8), "Elu is outside the importer")
    proto = model.proto
    assert not any(n.op_type == "Constant" for n in proto.graph.node)
    assert {"w1", "w2"} <= {t.name for t in proto.graph.initializer}
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(model(torch.from_numpy(x)).numpy(), _ort(path, x), atol=1e-5)
    cfg = FactorizeConfig(min_channels=8, align=1, min_mac_saving=0.0)
    _, rows, _ = factorize_graph(proto, cfg, (3, 8, 8))
    body = next(r for r in rows if r.name == "body")
    assert body.status == "factorized", body.reason


def _opset7_net(path: Path) -> Path:
    """Conv -> BatchNormalization (opset-7 form) -> Relu -> Upsample (scales attribute) -> GAP -> Flatten -> Gemm."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.standard_normal((6, 3, 3, 3)).astype(np.float32) * 0.3, "w"),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, 6).astype(np.float32), "s"),
             numpy_helper.from_array(rng.standard_normal(6).astype(np.float32) * 0.1, "b"),
             numpy_helper.from_array(rng.standard_normal(6).astype(np.float32) * 0.1, "m"),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, 6).astype(np.float32), "v"),
             numpy_helper.from_array(rng.standard_normal((4, 6)).astype(np.float32), "fc"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "fcb")]  # Gemm-7 needs C
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["bn"], name="bn"),
             helper.make_node("Relu", ["bn"], ["r"], name="relu"),
             helper.make_node("Upsample", ["r"], ["u"], name="up", scales=[1.0, 1.0, 2.0, 2.0], mode="nearest"),
             helper.make_node("Mul", ["u", "u"], ["sq"], name="sq"),
             helper.make_node("GlobalAveragePool", ["sq"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], name="head", transB=1)]
    # IR version 3 lists every initializer among the graph inputs, as exporters of that time did.
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])] + [
        helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.dims)) for t in inits]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 7)])
    model.ir_version = 3
    onnx.save(model, str(path))
    return path


def test_opset7_file_is_converted_and_matches_onnxruntime(tmp_path: Path) -> None:
    path = _opset7_net(tmp_path / "old.onnx")
    assert max(o.version for o in load_for_import(path).opset_import if o.domain == "") >= 9
    model = onnx_to_torch(path)
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y = model(x)
    np.testing.assert_allclose(y.numpy(), _ort(path, x.numpy()), atol=1e-4, rtol=1e-4)


def _opset23_net(path: Path, op: str) -> Path:
    rng = np.random.default_rng(4)
    if op == "Conv":
        inits = [numpy_helper.from_array(rng.standard_normal((3, 3, 3, 3)).astype(np.float32), "w")]
        nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1])]
    else:  # RMSNormalization first exists at opset 23: there is nothing to convert it to
        inits = [numpy_helper.from_array(np.ones(4, np.float32), "w")]
        nodes = [helper.make_node("RMSNormalization", ["x", "w"], ["c"], name="rms", axis=-1)]
    nodes.append(helper.make_node("Relu", ["c"], ["y"], name="relu"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, 4, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


def test_newer_opset_is_converted_down(tmp_path: Path) -> None:
    path = _opset23_net(tmp_path / "new.onnx", "Conv")
    assert max(o.version for o in load_for_import(path).opset_import if o.domain == "") == 21
    model = onnx_to_torch(path)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), _ort(path, x.numpy()), atol=1e-4, rtol=1e-4)


def test_opset_the_converter_cannot_handle_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"opset 23, outside the 9-21.*RMSNormalization.*opset between 9 and 21"):
        onnx_to_torch(_opset23_net(tmp_path / "rms.onnx", "RMSNormalization"))


def _fp16_net(path: Path, half: bool) -> Path:
    """float32 input -> Cast(fp16) -> Conv(shared weight) -> Relu -> Conv(same weight) -> Cast(fp32), the form
    fp16 converters with float32 I/O write; ``half=False`` gives the float32 twin with the same rounded weights."""
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((4, 4, 3, 3)) * 0.3).astype(np.float16)
    b = (rng.standard_normal(4) * 0.1).astype(np.float16)
    dt = np.float16 if half else np.float32
    elem = TensorProto.FLOAT16 if half else TensorProto.FLOAT
    inits = [numpy_helper.from_array(w.astype(dt), "w"), numpy_helper.from_array(b.astype(dt), "b")]
    nodes = [helper.make_node("Cast", ["x"], ["xh"], name="in_cast", to=elem),
             helper.make_node("Conv", ["xh", "w", "b"], ["c1"], name="conv_a", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w"], ["c2"], name="conv_b", pads=[1, 1, 1, 1]),  # shared "w"
             helper.make_node("Add", ["c2", "xh"], ["s"], name="residual"),
             helper.make_node("Cast", ["s"], ["y"], name="out_cast", to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 6, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_fp16_weights_become_float32_parameters(tmp_path: Path) -> None:
    model = onnx_to_torch(_fp16_net(tmp_path / "half.onnx", half=True))
    assert set(model.fp16_weights) == {"w", "b"}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    twin = _fp16_net(tmp_path / "single.onnx", half=False)  # ORT in float32 on the same (fp16-rounded) weights
    x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        y = model(x)
    assert y.dtype == torch.float32
    np.testing.assert_allclose(y.numpy(), _ort(twin, x.numpy()), atol=1e-4, rtol=1e-4)


def test_shared_initializer_gives_each_layer_its_own_parameters(tmp_path: Path) -> None:
    path = _fp16_net(tmp_path / "shared.onnx", half=False)
    model = onnx_to_torch(path)
    a, b = model.get_submodule("conv_a"), model.get_submodule("conv_b")
    assert torch.equal(a.weight, b.weight) and a.weight is not b.weight
    x = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), _ort(path, x.numpy()), atol=1e-4, rtol=1e-4)
    model(x).sum().backward()
    assert a.weight.grad is not None and b.weight.grad is not None
