"""Layer-wise reconstruction finetune: each factorized layer is trained to reproduce the dense layer's outputs on
calibration inputs; only those layers change, the error falls, and a data-aware start is never made worse."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from pipeline.config import FactorizeConfig
from pipeline.errors import ConfigError
from pipeline.factorize.swap import factorize_model
from pipeline.finetune.layerwise import layerwise_reconstruct

from .conftest import TinyNet, make_data, train_quick

CFG = FactorizeConfig(align=1, min_channels=8, selector="fixed", ratio=0.25, skip_first=True)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    data = make_data()
    model = train_quick(TinyNet(), data, epochs=3).eval()
    return model, data


def _params(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def test_weight_space_factors_improve_and_only_factorized_layers_change(setup) -> None:
    model, data = setup
    fact, _, structure = factorize_model(model, CFG, data.train.x[:1])
    before = _params(fact)
    report = layerwise_reconstruct(model, fact, list(structure), data.train.x[:64], steps=40, lr=3e-3)
    assert set(report) == set(structure) and structure
    for r in report.values():
        assert r["mse_after"] <= r["mse_before"]
    assert any(r["mse_after"] < 0.9 * r["mse_before"] for r in report.values())
    after = _params(fact)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(any(k.startswith(n + ".") for n in structure) for k in changed)
    with torch.no_grad():
        dense = model(data.test.x)
        agree = (fact(data.test.x).argmax(1) == dense.argmax(1)).float().mean()
    assert agree > 0.5


def test_data_aware_start_is_not_made_worse_and_propagate_runs(setup) -> None:
    model, data = setup
    cfg = dataclasses.replace(CFG, objective="outputs")
    fact, _, structure = factorize_model(model, cfg, data.train.x[:1], calib_images=data.train.x[:64])
    report = layerwise_reconstruct(model, fact, list(structure), data.train.x[:64], steps=20, propagate=True)
    assert all(r["mse_after"] <= r["mse_before"] for r in report.values())


def test_bad_settings_raise(setup) -> None:
    model, data = setup
    with pytest.raises(ConfigError, match="steps"):
        layerwise_reconstruct(model, model, [], data.train.x[:4], steps=-1)
