"""Preprocessing metadata in ONNX / ORT files, model.json, and baking the normalisation into the graph."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from exporters.metadata import (RANGE_RAW, DeployMeta, for_file, meta_from_mapping, metadata_props, model_json,
                                read_metadata, read_props, write_metadata)
from exporters.ort_convert import convert_to_ort
from exporters.preprocess import bake_preprocessing
from pipeline.errors import InputError, ValidationError
from pipeline.ort_session import make_session
from tests.exporters.tiny import MEAN, SHAPE, STD, export_pair, normalise, raw_images

NAMES = tuple(f"class {i}" for i in range(10))


def _meta(**kw) -> DeployMeta:
    return meta_from_mapping({"mean": list(MEAN), "std": list(STD), "input_size": list(SHAPE), "num_classes": 10,
                              "class_names": list(NAMES), **kw})


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return export_pair(tmp_path_factory.mktemp("pair"))


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = make_session(path, threads=1)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_props_are_namespaced_strings_with_json_lists() -> None:
    props = metadata_props(_meta())
    assert all(k.startswith("lowrank.") and isinstance(v, str) for k, v in props.items())
    assert json.loads(props["lowrank.mean"]) == list(MEAN) and json.loads(props["lowrank.std"]) == list(STD)
    assert props["lowrank.input_layout"] == "NCHW" and json.loads(props["lowrank.input_size"]) == list(SHAPE)
    assert props["lowrank.colour_order"] == "RGB" and props["lowrank.batch"] == "dynamic"
    assert props["lowrank.input_range"] == "[0,1] then (x-mean)/std"
    assert json.loads(props["lowrank.class_names"]) == list(NAMES) and props["lowrank.task"] == "classification"
    gray = metadata_props(meta_from_mapping({"mean": [0.1], "std": [0.3], "input_size": [1, 8, 8], "num_classes": 2}))
    assert gray["lowrank.colour_order"] == "gray" and "lowrank.class_names" not in gray


def test_bad_metadata_is_refused() -> None:
    with pytest.raises(ValidationError, match="one value per channel"):
        _meta(mean=[0.5])
    with pytest.raises(ValidationError, match="class names"):
        _meta(class_names=["a"])
    with pytest.raises(ValidationError, match="unknown field"):
        _meta(colour="RGB")


def test_metadata_round_trips_in_onnx_and_survives_ort_conversion(pair: tuple[Path, Path], tmp_path: Path) -> None:
    fp32, _ = pair
    m = tmp_path / "model.onnx"
    m.write_bytes(fp32.read_bytes())
    proto = onnx.load(str(m))
    proto.metadata_props.add(key="other.key", value="kept")
    onnx.save(proto, str(m))
    write_metadata(m, _meta())
    write_metadata(m, _meta())  # rewriting replaces, never duplicates
    keys = [p.key for p in onnx.load(str(m)).metadata_props]
    assert len(keys) == len(set(keys)) and "other.key" in keys
    assert read_metadata(m) == _meta()
    ort = Path(convert_to_ort(m, tmp_path / "mobile")["ort_path"])
    assert read_props(ort)["other.key"] == "kept"
    assert read_metadata(ort) == _meta()  # ORT format keeps the model metadata; an app reads it from the session


def test_missing_metadata_is_a_clear_error(pair: tuple[Path, Path]) -> None:
    with pytest.raises(InputError, match="lowrank"):
        read_metadata(pair[0])


def test_model_json_lists_fields_and_files() -> None:
    doc = model_json(_meta(), {"model.onnx": {"batch": "dynamic"}, "model.int8.b1.onnx": {"batch": 1}})
    assert doc["input"]["mean"] == list(MEAN) and doc["input"]["size"] == list(SHAPE)
    assert doc["class_names"] == list(NAMES) and doc["num_classes"] == 10
    assert list(doc["files"]) == ["model.int8.b1.onnx", "model.onnx"]
    assert set(doc["metadata_keys"]) == set(metadata_props(_meta()))
    json.dumps(doc)


@pytest.mark.parametrize("which", ["fp32", "int8"])
def test_baked_model_on_raw_input_equals_original_on_normalised(pair: tuple[Path, Path], tmp_path: Path,
                                                                which: str) -> None:
    src = pair[0] if which == "fp32" else pair[1]
    baked = tmp_path / f"{src.stem}.baked.onnx"
    info = bake_preprocessing(src, baked, MEAN, STD)
    write_metadata(baked, for_file(_meta(), baked=True))
    raw = raw_images(32, seed=5)
    # Raw images with exact zeros at the borders: the case a bias fold would get wrong.
    raw[:, :, 0, :] = 0.0
    a, b = _run(baked, raw), _run(src, normalise(raw))
    if which == "fp32":
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    else:
        # The Mul/Add stay float in front of QuantizeLinear: the int8 part sees the same values up to rounding,
        # so outputs agree except where a value sits on a quantization boundary.
        assert (a.argmax(1) == b.argmax(1)).mean() >= 0.95
        assert np.median(np.abs(a - b)) < 1e-5
    meta = read_metadata(baked)
    assert meta.baked and read_props(baked)["lowrank.input_range"] == RANGE_RAW
    assert len(info["scale"]) == 3
    with pytest.raises(ValidationError, match="already"):
        bake_preprocessing(baked, tmp_path / "twice.onnx", MEAN, STD)


def test_bake_refuses_wrong_channel_count(pair: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="channels"):
        bake_preprocessing(pair[0], tmp_path / "x.onnx", (0.5,), (0.2,))
