"""Input geometry resolved once: the ONNX model's fixed input, else ``dataset.input_size``, else as stored; the card
carries ``(C, H, W)`` and the heads."""
from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from pipeline.card import ModelCard
from pipeline.config import build_config
from pipeline.errors import ConfigError
from pipeline.geometry import resolve_input_size
from pipeline.models.onnx.info import declared_input_hw, onnx_model_info
from tests.helpers.wild_models import WILD_MODELS, export_wild, make_model


@pytest.fixture(scope="module")
def ctc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = WILD_MODELS["ctc_recognizer"]
    return export_wild(make_model(spec), spec, tmp_path_factory.mktemp("geo") / "ctc.onnx", 11)


def test_fixed_onnx_input_decides(ctc: Path) -> None:
    assert declared_input_hw(ctc) == (32, 128)
    assert onnx_model_info(ctc)["input_hw"] == (32, 128)
    assert resolve_input_size(build_config(None, [], model=str(ctc), data="npz:x.npz")) == (32, 128)
    same = build_config(None, ["dataset.input_size=[32, 128]"], model=str(ctc), data="npz:x.npz")
    assert resolve_input_size(same) == (32, 128)
    with pytest.raises(ConfigError, match=r"fixes its input to \[32, 128\]"):
        resolve_input_size(build_config(None, ["dataset.input_size=[48, 48]"], model=str(ctc), data="npz:x.npz"))


def test_dynamic_onnx_input_takes_the_config(ctc: Path, tmp_path: Path) -> None:
    m = onnx.load(str(ctc))
    for i, d in enumerate(m.graph.input[0].type.tensor_type.shape.dim[2:]):
        d.dim_param = f"s{i}"
    dyn = tmp_path / "dyn.onnx"
    onnx.save(m, str(dyn))
    assert declared_input_hw(dyn) is None
    assert resolve_input_size(build_config(None, [], model=str(dyn), data="npz:x.npz")) is None
    cfg = build_config(None, ["dataset.input_size=[24, 96]"], model=str(dyn), data="npz:x.npz")
    assert resolve_input_size(cfg) == (24, 96)
    assert resolve_input_size(build_config(None, ["dataset.input_size=[8, 16]"])) == (8, 16)  # zoo model


def test_config_keys_checked() -> None:
    assert build_config(None, []).task == "auto" and build_config(None, []).dataset.input_size is None
    with pytest.raises(ConfigError, match="dataset.input_size"):
        build_config(None, ["dataset.input_size=[2, 64]"])
    with pytest.raises(ConfigError, match="task"):
        build_config(None, ["task=detect"])
    with pytest.raises(ConfigError, match="benchmark.max_drop"):
        build_config(None, ["benchmark.max_drop=2"])


def test_card_carries_geometry_and_heads() -> None:
    head = {"name": "ctc_logits", "kind": "sequence", "layout": "TNK", "values": "logit", "num_classes": 11,
            "blank": 0}
    card = ModelCard(spec="m.onnx", num_classes=11, in_channels=3, input_size=128, input_hw=(32, 128),
                     mean=(0.0,) * 3, std=(1.0,) * 3, heads=(head,), task="sequence", output="heads")
    assert card.input_shape == (3, 32, 128)
    back = ModelCard.from_json(card.to_json())
    assert back == card and back.heads[0]["layout"] == "TNK"
    square = ModelCard(spec="m.onnx", num_classes=2, in_channels=1, input_size=16, mean=(0.0,), std=(1.0,))
    assert square.input_shape == (1, 16, 16) and ModelCard.from_json(square.to_json()) == square
