"""End to end through ``factorize_model`` (torch path) and ``factorize_graph`` (ONNX path) with
``factorize.objective=outputs``: a tiny CNN trained for a few steps on generated data, factorized at ~3x fewer MACs,
agrees with the dense model (before any finetuning) better than the weight-space factorization at the same ranks."""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from pipeline.config import FactorizeConfig
from pipeline.errors import ConfigError
from pipeline.factorize.onnx_graph import factorize_graph
from pipeline.factorize.swap import count_macs_params, factorize_model

K, SIZE, WIDTH = 10, 12, 32


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth class patterns (fixed) plus seeded noise: spatially correlated inputs."""
    pat = F.avg_pool2d(torch.randn(K, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7)), 3, 1, 1)
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, K, (n,), generator=g)
    return pat[y] + 0.6 * torch.randn(n, 3, SIZE, SIZE, generator=g), y


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        w = WIDTH
        self.f = nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
                               nn.Conv2d(w, w, 3, padding=1, stride=2), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1),
                               nn.ReLU())
        self.c = nn.Linear(w, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.f(x).mean((2, 3)))


@pytest.fixture(scope="module")
def trained() -> tuple[Net, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    xtr, ytr = _data(512, 1)
    xte, _ = _data(256, 2)
    m = Net()
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    for _ in range(120):
        i = torch.randint(0, 512, (64,))
        opt.zero_grad()
        F.cross_entropy(m(xtr[i]), ytr[i]).backward()
        opt.step()
    return m.eval(), xtr, xte


BASE = FactorizeConfig(align=1, min_channels=8, selector="fixed", ratio=0.25)


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.argmax(1) == b.argmax(1)).float().mean())


@pytest.mark.parametrize("method", ["tucker2", "channel_svd", "spatial_svd", "cp"])
def test_outputs_objective_agrees_better_before_finetuning(trained, method: str) -> None:
    model, xtr, xte = trained
    with torch.no_grad():
        dense = model(xte)
    res = {}
    for obj in ("weights", "outputs"):
        cfg = dataclasses.replace(BASE, method=method, objective=obj, cp_time_limit_s=0.5,
                                  ratio=0.12 if method == "spatial_svd" else BASE.ratio)
        fact, rows, structure = factorize_model(model, cfg, xte[:1], calib_images=xtr[:64])
        with torch.no_grad():
            out = fact(xte)
        res[obj] = (_agreement(out, dense), float((out - dense).norm() / dense.norm()), structure)
    macs0, _ = count_macs_params(model, xte[:1])
    macs1, _ = count_macs_params(fact, xte[:1])
    assert macs0 / macs1 > 2.5
    assert res["weights"][2] == res["outputs"][2]          # the fixed selector: the same ranks, only the factors differ
    assert res["outputs"][1] < 0.8 * res["weights"][1], res  # logits closer to the dense model's
    assert res["outputs"][0] >= res["weights"][0], res


def test_sequential_and_energy_on_whitened_spectra(trained) -> None:
    model, xtr, xte = trained
    with torch.no_grad():
        dense = model(xte)
    # Energy on the whitened spectra of the output variation (centred moments).
    cfg = dataclasses.replace(BASE, objective="outputs", selector="energy", energy=0.96)
    errs = {}
    for seq in (False, True):
        fact, rows, structure = factorize_model(model, dataclasses.replace(cfg, sequential=seq), xte[:1],
                                                calib_images=xtr[:64])
        done = [r for r in rows if r.status == "factorized"]
        assert done and all("output error" in r.reason for r in done)
        with torch.no_grad():
            out = fact(xte)
        errs[seq] = float((out - dense).norm() / dense.norm())
        assert _agreement(out, dense) > 0.8
    assert errs[True] < 1.2 * errs[False], errs  # sequential: same ranks, factors fitted to the perturbed inputs


@pytest.mark.parametrize("with_eval", [False, True])
def test_budget_selector_uses_output_error(trained, with_eval: bool) -> None:
    model, xtr, xte = trained
    with torch.no_grad():
        ref = model(xte[:64]).argmax(1)

    def eval_fn(m: nn.Module) -> float:  # agreement with the dense model on a validation subset
        with torch.no_grad():
            return float((m(xte[:64]).argmax(1) == ref).float().mean())

    cfg = dataclasses.replace(BASE, objective="outputs", selector="budget",
                              budget=dataclasses.replace(BASE.budget, macs=0.4))
    fact, rows, _ = factorize_model(model, cfg, xte[:1], eval_fn=eval_fn if with_eval else None,
                                    calib_images=xtr[:64])
    macs0, _ = count_macs_params(model, xte[:1])
    macs1, _ = count_macs_params(fact, xte[:1])
    assert macs1 <= 0.4 * macs0 * 1.001
    assert all("output error" in r.reason for r in rows if r.status == "factorized")


def test_outputs_objective_needs_images(trained) -> None:
    model, _, xte = trained
    with pytest.raises(ConfigError, match="calibration images"):
        factorize_model(model, dataclasses.replace(BASE, objective="outputs"), xte[:1])
    with pytest.raises(ConfigError, match="objective"):
        factorize_model(model, dataclasses.replace(BASE, objective="activations"), xte[:1])


def _graph_of(model: Net) -> onnx.ModelProto:
    """The conv trunk of ``model`` as a hand-written ONNX graph (Conv/Relu ... -> GlobalAveragePool)."""
    nodes, inits, x = [], [], "x"
    convs = [m for m in model.f if isinstance(m, nn.Conv2d)]
    for i, c in enumerate(convs):
        inits += [numpy_helper.from_array(c.weight.detach().numpy(), f"w{i}"),
                  numpy_helper.from_array(c.bias.detach().numpy(), f"b{i}")]
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}", kernel_shape=[3, 3],
                                   pads=[1, 1, 1, 1], strides=list(c.stride)),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        x = f"r{i}"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["y"], name="gap"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", WIDTH, 1, 1])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_graph_path_outputs_objective_keeps_features_closer(trained) -> None:
    model, xtr, xte = trained
    proto = _graph_of(model)

    def run(p: onnx.ModelProto) -> np.ndarray:
        sess = ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run(None, {"x": xte.numpy()})[0]

    dense = run(proto)
    errs = {}
    for obj in ("weights", "outputs"):
        cfg = dataclasses.replace(BASE, method="tucker2", objective=obj)
        new, rows, structure = factorize_graph(proto, cfg, (3, SIZE, SIZE), calib_images=xtr[:64].numpy())
        assert len(structure) == 3
        errs[obj] = float(np.linalg.norm(run(new) - dense) / np.linalg.norm(dense))
    assert errs["outputs"] < 0.8 * errs["weights"], errs
