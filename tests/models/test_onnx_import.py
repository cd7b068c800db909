"""ONNX import: tiny CNNs exported by torch (opset 11 and 17) and hand-built graphs, checked against ONNX Runtime at
two spatial sizes; layer replacement by name; state-dict round trips; unsupported operators listed. File-safety
rejections are in test_onnx_validate.py, per-op coverage in test_onnx_ops.py, exports from the wild in
test_onnx_wild.py."""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from pipeline.errors import InputError
from pipeline.models import build_model
from pipeline.models.onnx import (
    OnnxGraphModule,
    onnx_model_info,
    onnx_to_torch,
)
from tests.helpers.ort import session

SIZES = (16, 24)  # two spatial sizes: the imported model must honour dynamic H/W


# ------------------------------------------------------------------------------------------------- tiny torch CNNs
class ConvBnRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))  # GlobalAveragePool + Flatten + Gemm


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 8, 1)
        self.avg = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(x + self.b(F.relu(self.bn(self.a(x)))))  # residual Add
        x = self.avg(x).mean((2, 3), keepdim=True)  # ReduceMean over the spatial axes
        x = x.view(x.size(0), -1)  # Shape/Gather/Unsqueeze/Concat/Reshape chain
        return torch.softmax(self.fc(x), dim=1)


class Depthwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(3, 12, 1)
        self.dw = nn.Conv2d(12, 12, 3, stride=2, padding=1, groups=12)
        self.dil = nn.Conv2d(12, 8, 3, padding=2, dilation=2)
        self.se = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.expand(x))  # Clip(0, 6)
        x = F.hardswish(self.dw(x))
        x = F.pad(x, (0, 1, 0, 1))  # asymmetric Pad
        x = self.dil(x)
        x = x * F.hardsigmoid(self.se(x.mean((2, 3), keepdim=True)))  # Mul with a broadcast gate
        x = torch.clamp(x, -1.5, 2.5) - 0.25  # Clip(min, max) + Sub
        x = torch.sigmoid(x) / 2.0  # Sigmoid + Div
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


TORCH_MODELS = {"conv_bn_relu": ConvBnRelu, "residual": Residual, "depthwise": Depthwise}


def _randomise_bn(model: nn.Module) -> None:
    # Non-trivial running statistics so that BatchNorm import errors show up in the outputs.
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def _export(model: nn.Module, path: Path, opset: int) -> Path:
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.randn(1, 3, 16, 16),), str(path), dynamo=False, opset_version=opset,
            # PRESERVE keeps BatchNormalization nodes (EVAL would fold them into the convs), as in third-party files.
            training=torch.onnx.TrainingMode.PRESERVE, input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "n", 2: "h", 3: "w"}, "logits": {0: "n"}},
        )
    return path


def _ort(path: Path, x: torch.Tensor) -> np.ndarray:
    sess = session(str(path))
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def _assert_matches_ort(path: Path, module: nn.Module, channels: int = 3) -> None:
    g = torch.Generator().manual_seed(0)
    for size in SIZES:
        x = torch.randn(2, channels, size, size, generator=g)
        with torch.no_grad():
            got = module(x)
        np.testing.assert_allclose(got.numpy(), _ort(path, x), atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], Path]:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("onnx_models")
    out = {}
    for name, cls in TORCH_MODELS.items():
        model = cls()
        _randomise_bn(model)
        for opset in (11, 17):
            out[(name, opset)] = _export(model, root / f"{name}_{opset}.onnx", opset)
    return out


@pytest.mark.parametrize("opset", [11, 17])
@pytest.mark.parametrize("name", sorted(TORCH_MODELS))
def test_torch_exports_match_onnxruntime(exported: dict[tuple[str, int], Path], name: str, opset: int) -> None:
    path = exported[(name, opset)]
    module = onnx_to_torch(path)
    assert isinstance(module, OnnxGraphModule)
    _assert_matches_ort(path, module)


def test_layers_are_standard_modules_addressable_by_name(exported: dict[tuple[str, int], Path]) -> None:
    module = onnx_to_torch(exported[("conv_bn_relu", 17)])
    convs = [n for n, m in module.named_modules() if isinstance(m, nn.Conv2d)]
    bns = [n for n, m in module.named_modules() if isinstance(m, nn.BatchNorm2d)]
    linears = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    assert len(convs) == 2 and len(bns) == 2 and len(linears) == 1
    for name in convs + bns + linears:
        assert "." not in name and name.isidentifier()
        assert module.get_submodule(name) is getattr(module, name)
    # Names come from the ONNX nodes ('/conv1/Conv' -> 'conv1_Conv').
    assert convs[0] == "conv1_Conv"
    bn = module.get_submodule(bns[0])
    assert not bn.training and bn.track_running_stats and float(bn.running_var.min()) >= 0.5


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    # Exactly what the factorizer does (pipeline.factorize.swap.set_module).
    parent_name, _, leaf = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, new)


def _equivalent_sequential(conv: nn.Conv2d) -> nn.Sequential:
    """A full-rank two-layer form of ``conv``: the conv itself then an identity 1x1 (what channel SVD builds)."""
    first = copy.deepcopy(conv)
    second = nn.Conv2d(conv.out_channels, conv.out_channels, 1, bias=False)
    with torch.no_grad():
        second.weight.copy_(torch.eye(conv.out_channels).reshape(conv.out_channels, conv.out_channels, 1, 1))
    return nn.Sequential(first, second)


@pytest.mark.parametrize("name", ["residual", "depthwise"])
def test_replacing_a_conv_by_an_equivalent_sequential_keeps_outputs(exported: dict[tuple[str, int], Path],
                                                                    name: str) -> None:
    module = onnx_to_torch(exported[(name, 17)])
    x = torch.randn(2, 3, 20, 20)
    with torch.no_grad():
        before = module(x)
    swapped = copy.deepcopy(module)  # apply_structure works on a deep copy
    convs = [n for n, m in swapped.named_modules() if isinstance(m, nn.Conv2d)]
    for conv_name in convs:
        _replace(swapped, conv_name, _equivalent_sequential(swapped.get_submodule(conv_name)))
    assert all(isinstance(swapped.get_submodule(n), nn.Sequential) for n in convs)
    with torch.no_grad():
        after = swapped(x)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    # Now a *different* replacement must change the output: forward really uses the swapped-in module.
    _replace(swapped, convs[0], nn.Conv2d(3, swapped.get_submodule(convs[0])[0].out_channels, 3, padding=1))
    with torch.no_grad():
        assert not torch.allclose(swapped(x), before, atol=1e-3)


def test_state_dict_round_trip_into_a_fresh_import(exported: dict[tuple[str, int], Path]) -> None:
    path = exported[("residual", 11)]
    first, second = onnx_to_torch(path), onnx_to_torch(path)
    assert list(first.state_dict()) == list(second.state_dict())  # deterministic names
    # Keys are the layers' parameters and BN statistics only (graph constants are rebuilt from the file).
    assert all(k.split(".")[-1] in {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
               for k in first.state_dict())
    with torch.no_grad():
        for p in first.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    second.load_state_dict(first.state_dict(), strict=True)
    x = torch.randn(3, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(second(x), first(x))


def test_training_step_updates_conv_weights(exported: dict[tuple[str, int], Path]) -> None:
    module = onnx_to_torch(exported[("conv_bn_relu", 11)]).train()
    conv = module.get_submodule("conv1_Conv")
    before = conv.weight.detach().clone()
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    loss = F.cross_entropy(module(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    opt.step()
    assert not torch.equal(conv.weight, before)


def test_reexport_keeps_dynamic_batch_and_spatial(exported: dict[tuple[str, int], Path], tmp_path: Path) -> None:
    module = onnx_to_torch(exported[("residual", 17)])
    out = _export(module, tmp_path / "again.onnx", 17)
    nodes = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "Shape" not in nodes  # the view(x.size(0), -1) chain came back as a single Flatten
    for n, size in ((1, 16), (3, 24)):
        x = torch.randn(n, 3, size, size)
        with torch.no_grad():
            np.testing.assert_allclose(_ort(out, x), module(x).numpy(), atol=1e-4, rtol=1e-4)


class SizeArithmetic(nn.Module):
    """``view(n, c*h*w)``: shape arithmetic (Mul on sizes) that is computed at run time, not symbolically."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.fc = nn.Linear(4 * 3 * 3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.avg_pool2d(self.conv(x), 2)
        return self.fc(y.view(y.size(0), y.size(1) * y.size(2) * y.size(3)))


def test_runtime_shape_arithmetic_stays_dynamic_on_reexport(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = _export(SizeArithmetic(), tmp_path / "arith.onnx", 13)
    module = onnx_to_torch(src)
    again = _export(module, tmp_path / "arith_again.onnx", 13)
    for n in (1, 3):  # the batch axis must not be frozen at the traced batch size
        x = torch.randn(n, 3, 16, 16)
        with torch.no_grad():
            y = module(x).numpy()
        np.testing.assert_allclose(y, _ort(src, x), atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(_ort(again, x), y, atol=1e-4, rtol=1e-4)


def test_factorized_checkpoint_rebuilds_from_the_onnx_spec(exported: dict[tuple[str, int], Path],
                                                           tmp_path: Path) -> None:
    # The contract with pipeline/checkpoint.py: model.json {"spec": "x.onnx", "structure": ...} -> build_model ->
    # apply_structure (by qualified name) -> load_state_dict.
    from pipeline.checkpoint import load_model, save_model
    from pipeline.factorize.swap import factorize_with_structure

    path = exported[("residual", 17)]
    model = build_model(str(path), 4, 3, 16)
    structure = {"a_Conv": {"format": "channel_svd", "ranks": [8]},
                 "fc_Gemm": {"format": "linear_svd", "ranks": [4]}}
    fact = factorize_with_structure(model, structure)
    assert isinstance(fact.get_submodule("a_Conv"), nn.Sequential)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(fact(x), model(x), atol=1e-5, rtol=1e-4)  # full rank: same function
    from pipeline.card import ModelCard

    save_model(fact, ModelCard(spec=str(path), num_classes=4, in_channels=3, input_size=16, mean=(0.0,) * 3,
                               std=(1.0,) * 3, structure=structure), tmp_path / "ckpt")
    rebuilt, _ = load_model(tmp_path / "ckpt")
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), fact(x))


def test_build_model_and_model_info(exported: dict[tuple[str, int], Path], tmp_path: Path) -> None:
    path = exported[("depthwise", 17)]
    model = build_model(str(path), num_classes=3, in_channels=3, input_size=16)
    assert isinstance(model, OnnxGraphModule)
    info = onnx_model_info(path)
    assert info == {"num_classes": 3, "in_channels": 3, "input_size": None, "input_hw": None,
                    "input_name": "input"}
    fixed = tmp_path / "fixed.onnx"
    m = ConvBnRelu().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.randn(1, 3, 20, 20),), str(fixed), dynamo=False, opset_version=13,
                          input_names=["img"])
    assert onnx_model_info(fixed) == {"num_classes": 5, "in_channels": 3, "input_size": 20, "input_hw": (20, 20),
                                      "input_name": "img"}


# ------------------------------------------------------------------------------------------ hand-built ONNX graphs
def _save(graph: onnx.GraphProto, path: Path, opset: int = 17, **kw: object) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], **kw)
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(arr.astype(np.float32) if arr.dtype.kind == "f" else arr, name)


def _matmul_classifier(path: Path, opset: int) -> Path:
    """Conv (asymmetric pads) -> GlobalAveragePool -> Flatten -> MatMul + Add bias -> Softmax, plus a Transpose,
    Squeeze/Unsqueeze, Concat, Identity, Dropout, Constant, LeakyRelu, HardSigmoid and an int Shape/Slice/Reshape."""
    rng = np.random.default_rng(0)
    squeeze_axes = helper.make_tensor("sq_axes", TensorProto.INT64, [2], [2, 3])
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="stem.conv", pads=[0, 0, 1, 1], strides=[2, 2]),
        helper.make_node("LeakyRelu", ["c"], ["r"], name="act", alpha=0.1),
        helper.make_node("Conv", ["r", "w2", "b2"], ["c2"], name="side", pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["r", "c2"], ["cat"], name="cat", axis=1),
        helper.make_node("HardSigmoid", ["cat"], ["hs"], name="hsig", alpha=0.25, beta=0.4),
        helper.make_node("Dropout", ["hs"], ["d"], name="drop"),
        helper.make_node("GlobalAveragePool", ["d"], ["gap"], name="gap"),
        helper.make_node("Identity", ["gap"], ["gap2"], name="ident"),
    ]
    inits = [
        _init("w", rng.standard_normal((4, 3, 3, 3)) * 0.3),
        _init("w2", rng.standard_normal((4, 4, 3, 3)) * 0.3),
        _init("b2", rng.standard_normal(4)),
        _init("fc_w", rng.standard_normal((8, 5))),
        _init("fc_b", rng.standard_normal(5)),
    ]
    if opset >= 13:
        nodes.append(helper.make_node("Constant", [], ["sq_axes"], name="axes_const", value=squeeze_axes))
        nodes.append(helper.make_node("Squeeze", ["gap2", "sq_axes"], ["flat"], name="squeeze"))
    else:
        nodes.append(helper.make_node("Squeeze", ["gap2"], ["flat"], name="squeeze", axes=[2, 3]))
    nodes += [
        helper.make_node("MatMul", ["flat", "fc_w"], ["mm"], name="fc.matmul"),
        helper.make_node("Add", ["mm", "fc_b"], ["logits_raw"], name="fc.add"),
        helper.make_node("Transpose", ["logits_raw"], ["t"], name="tr", perm=[1, 0]),
        helper.make_node("Transpose", ["t"], ["t2"], name="tr_back", perm=[1, 0]),
        helper.make_node("Softmax", ["t2"], ["y"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes, "matmul_classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])],
        inits,
    )
    return _save(graph, path, opset)


@pytest.mark.parametrize("opset", [11, 17])
def test_handbuilt_matmul_classifier(tmp_path: Path, opset: int) -> None:
    path = _matmul_classifier(tmp_path / "mm.onnx", opset)
    module = onnx_to_torch(path)
    _assert_matches_ort(path, module)
    # MatMul + bias Add became one nn.Linear with a bias (factorizable like any classifier).
    fc = module.get_submodule("fc_matmul")
    assert isinstance(fc, nn.Linear) and fc.bias is not None and (fc.in_features, fc.out_features) == (8, 5)
    assert isinstance(module.get_submodule("stem_conv"), nn.Conv2d)
    assert onnx_model_info(path)["num_classes"] == 5


def test_gemm_alpha_beta_transb_and_reshape_const(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p"], name="pool", kernel_shape=[3, 3], strides=[2, 2],
                         pads=[0, 0, 1, 1]),
        helper.make_node("GlobalAveragePool", ["p"], ["g"], name="gap"),
        helper.make_node("Reshape", ["g", "shape"], ["f"], name="reshape"),
        helper.make_node("Gemm", ["f", "B", "C"], ["y"], name="head", alpha=0.5, beta=2.0, transB=1),
    ]
    graph = helper.make_graph(
        nodes, "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 6])],
        [_init("shape", np.array([-1, 2], dtype=np.int64)), _init("B", rng.standard_normal((6, 2))),
         _init("C", rng.standard_normal(6))],
    )
    path = _save(graph, tmp_path / "gemm.onnx", 13)
    module = onnx_to_torch(path)
    assert isinstance(module.get_submodule("head"), nn.Linear)
    _assert_matches_ort(path, module, channels=2)


def test_layer_names_are_sanitised_and_never_shadow_module_attributes(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    names = ["training", "forward", "1.conv", "", "a/b.c"]
    nodes, prev = [], "x"
    for i, name in enumerate(names):
        nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], name=name, pads=[1, 1, 1, 1]))
        prev = f"c{i}"
    graph = helper.make_graph(
        nodes, "names",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, "h", "w"])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["n", 2, "h", "w"])],
        [_init(f"w{i}", rng.standard_normal((2, 2, 3, 3)) * 0.3) for i in range(len(names))],
    )
    path = _save(graph, tmp_path / "names.onnx")
    module = onnx_to_torch(path)
    convs = [n for n, m in module.named_modules() if isinstance(m, nn.Conv2d)]
    assert convs == ["training_2", "forward_2", "n1_conv", "conv_3", "a_b_c"]
    assert module.training is False and callable(module.forward)
    _assert_matches_ort(path, module, channels=2)


# ------------------------------------------------------------------------------------------------------ rejections
def test_unsupported_ops_are_all_listed(tmp_path: Path) -> None:
    h = 4
    nodes = [
        helper.make_node("Squeeze", ["x", "ax"], ["seq"], name="sq"),
        helper.make_node("LSTM", ["seq", "W", "R"], ["", "y_h"], name="lstm", hidden_size=h),
        helper.make_node("Elu", ["y_h"], ["y"], name="elu"),
    ]
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        nodes, "rnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 1, 3, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, h])],
        [_init("ax", np.array([3], dtype=np.int64)), _init("W", rng.standard_normal((1, 4 * h, 3))),
         _init("R", rng.standard_normal((1, 4 * h, h)))],
    )
    path = _save(graph, tmp_path / "lstm.onnx", 17)
    with pytest.raises(InputError, match=r"LSTM.*Elu|Elu.*LSTM") as exc:
        onnx_to_torch(path)
    assert "Supported:" in str(exc.value) and "Conv" in str(exc.value)


def test_shape_arithmetic_that_folds_to_plain_integers_imports(tmp_path) -> None:
    """An empty slice of a Shape concatenated with constants is all integers: it becomes a constant shape."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper, numpy_helper

    from pipeline.models import load_onnx_model

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    ints = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Shape", ["c"], ["s"]),
        helper.make_node("Slice", ["s", "z", "z"], ["empty"]),  # dims [0:0]: no entries left
        helper.make_node("Concat", ["empty", "tail"], ["shape"], axis=0),
        helper.make_node("Reshape", ["c", "shape"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256])],
                              [w, ints("z", [0]), ints("tail", [1, -1])])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    model, fallback = load_onnx_model(str(path), (3, 8, 8))
    assert fallback is None
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with torch.no_grad():
        out = model(torch.from_numpy(x)).numpy()
    assert out.shape == ref.shape == (1, 256) and np.allclose(out, ref, atol=1e-5)
