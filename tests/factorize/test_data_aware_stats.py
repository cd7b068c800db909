"""Calibration statistics: the torch-hook collector computes the moments it documents (checked against a direct
im2col computation), and the ONNX Runtime collector gives the same statistics on the same model."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from pipeline.factorize.activations import collect_stats, collect_stats_onnx
from pipeline.factorize.formats.stats import KINDS

ALL = tuple(KINDS)


class TwoConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 6, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def _onnx_of(model: TwoConv) -> onnx.ModelProto:
    """The same network written by hand as an ONNX graph (Conv -> Relu -> Conv, stride 2)."""
    inits = [numpy_helper.from_array(t.detach().numpy().astype(np.float32), n) for n, t in (
        ("wa", model.a.weight), ("ba", model.a.bias), ("wb", model.b.weight), ("bb", model.b.bias))]
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["ya"], name="conv_a", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["ya"], ["ra"], name="relu"),
             helper.make_node("Conv", ["ra", "wb", "bb"], ["y"], name="conv_b", kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1], strides=[2, 2])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 10, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 6, 5, 5])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def test_torch_moments_equal_direct_im2col_computation() -> None:
    torch.manual_seed(0)
    model = TwoConv()
    x = torch.randn(5, 3, 10, 10)
    st = collect_stats(model, {"b": ALL}, x, positions=10_000)["b"]
    h = torch.relu(model.a(x)).detach().double()
    cols = F.unfold(h, 3, padding=1, stride=2).permute(1, 0, 2).reshape(72, -1)
    torch.testing.assert_close(st.moment("patch"), cols @ cols.T / cols.shape[1])
    vert = F.unfold(F.pad(h, (0, 0, 1, 1)), (3, 1), stride=(2, 1)).permute(1, 0, 2).reshape(24, -1)
    torch.testing.assert_close(st.moment("vertical"), vert @ vert.T / vert.shape[1])
    pix = h.permute(1, 0, 2, 3).reshape(8, -1)
    torch.testing.assert_close(st.moment("channel_in"), pix @ pix.T / pix.shape[1])
    y = (model.b(h.float()) - model.b.bias[None, :, None, None]).detach().double().permute(1, 0, 2, 3).reshape(6, -1)
    torch.testing.assert_close(st.moment("channel_out"), y @ y.T / y.shape[1])


@pytest.mark.parametrize("positions", [10_000, 7])
def test_onnx_runtime_statistics_equal_torch_hook_statistics(positions: int) -> None:
    """Same images, same seeds: the same (sub-sampled) positions and moments, up to float32 activation rounding."""
    torch.manual_seed(1)
    model = TwoConv().eval()
    x = torch.randn(9, 3, 10, 10)
    st_t = collect_stats(model, {"a": ALL, "b": ALL}, x, positions=positions, batch_size=4)
    st_o = collect_stats_onnx(_onnx_of(model), {"conv_a": ALL, "conv_b": ALL}, x.numpy(), positions=positions,
                              batch_size=3)
    for tname, oname in (("a", "conv_a"), ("b", "conv_b")):
        for kind in ALL:
            assert st_t[tname].counts[kind] == st_o[oname].counts[kind]
            torch.testing.assert_close(st_o[oname].moment(kind), st_t[tname].moment(kind), rtol=1e-5, atol=1e-5)


def test_memory_bounds_and_linear_layers() -> None:
    lin = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    x = torch.randn(30, 3, 2, 2)
    st = collect_stats(lin, {"1": ("patch", "channel_out")}, x, max_images=20)["1"]
    assert st.counts["patch"] == 20 and st.moment("patch").shape == (12, 12)
    conv = nn.Conv2d(2, 4, 3)
    st = collect_stats(conv, {"": ("patch",)}, torch.randn(4, 2, 20, 20), positions=16)[""]
    assert st.counts["patch"] == 4 * 16
