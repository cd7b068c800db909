"""ModelSpec/DataSpec parsing and the ModelCard (model.json): round trip, validation, version check."""
from __future__ import annotations

import json

import pytest
import torch

from pipeline.card import CARD_VERSION, ModelCard
from pipeline.checkpoint import load_card, load_model, save_model
from pipeline.errors import ConfigError, InputError
from pipeline.models import build_model
from pipeline.spec import DataSpec, ModelSpec


@pytest.mark.parametrize("text, kind, slug", [
    ("vgg11", "zoo", "vgg11"),
    ("models/my net.py:build", "file", "my_net.py-build"),
    ("some/dir/net.onnx", "onnx", "net.onnx"),
    ("other/tiny.py:make", "file", "tiny.py-make"),  # never the zoo model tiny's folder
])
def test_model_spec_kinds_and_slugs(text: str, kind: str, slug: str) -> None:
    spec = ModelSpec.parse(text)
    assert (spec.kind, spec.slug) == (kind, slug)
    assert spec.is_onnx == (kind == "onnx") and spec.is_file == (kind != "zoo")


@pytest.mark.parametrize("text, error, match", [
    ("", ConfigError, "empty"),
    ("net.py", InputError, "no factory"),
    ("net.onnx:build", ConfigError, "takes no factory"),
])
def test_model_spec_rejects_malformed(text: str, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        ModelSpec.parse(text)


def test_specs_fingerprint_file_contents(tmp_path) -> None:
    f = tmp_path / "net.onnx"
    f.write_bytes(b"a")
    a = ModelSpec.parse(str(f)).fingerprint()
    f.write_bytes(b"b")
    assert a != ModelSpec.parse(str(f)).fingerprint() and a["inputs"] == "unnormalised"
    with pytest.raises(InputError, match="does not exist"):
        ModelSpec.parse(str(tmp_path / "gone.py:f")).check_exists()
    d = DataSpec.parse(f"npz:{f}")
    assert (d.name, d.path) == ("npz", str(f)) and "data_sha256" in d.fingerprint()
    assert DataSpec.parse("digits").fingerprint() == {"data": "digits"}


def _card(**kw) -> ModelCard:
    base = dict(spec="tiny", num_classes=3, in_channels=1, input_size=8, mean=(0.5,), std=(0.25,),
                class_names=("a", "b", "c"))
    return ModelCard(**{**base, **kw})


def test_card_round_trips_through_a_checkpoint(tmp_path) -> None:
    card = _card()
    model = build_model("tiny", 3, 1, 8)  # a zoo model, so load_model can rebuild it from the card
    save_model(model, card, tmp_path)
    record = json.loads((tmp_path / "model.json").read_text())
    assert record["version"] == CARD_VERSION and record["task"] == "classify"
    assert load_card(tmp_path) == card and card.input_shape == (1, 8, 8)
    back, loaded = load_model(tmp_path)
    x = torch.randn(2, 1, 8, 8)
    assert loaded == card and torch.equal(back(x), model.eval()(x))


@pytest.mark.parametrize("change, match", [
    ({"num_classes": 0}, "num_classes"),
    ({"mean": (0.1, 0.2)}, "mean/std"),
    ({"std": (0.0,)}, "std"),
    ({"class_names": ("a",)}, "class names"),
    ({"task": "detect"}, "task"),
])
def test_card_validation(change: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        _card(**change)


@pytest.mark.parametrize("edit, match", [
    (lambda r: r.update(version=0), "card version"),
    (lambda r: r.pop("mean"), "missing fields"),
    (lambda r: r.update(colour="red"), "unknown fields"),
])
def test_card_loader_rejects_bad_records(tmp_path, edit, match: str) -> None:
    record = _card().to_json()
    edit(record)
    (tmp_path / "model.json").write_text(json.dumps(record))
    with pytest.raises(InputError, match=match):
        load_card(tmp_path)
