"""Mobile deliverables: .ort for fp32 and int8 per target, batch-1 copies, checker on the shipped graphs,
byte-reproducible conversion and config (no temp paths)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from exporters import ort_mobile
from exporters.metadata import for_file, meta_from_mapping, read_metadata, write_metadata
from exporters.ort_convert import aslr_can_be_disabled, contrib_ops, ort_nodes
from exporters.ort_mobile import MobileTarget, build_mobile, fix_batch
from pipeline.errors import ConfigError, ValidationError
from pipeline.ort_session import make_session
from tests.exporters.tiny import MEAN, SHAPE, STD, export_pair, normalise, raw_images

META = meta_from_mapping({"mean": list(MEAN), "std": list(STD), "input_size": list(SHAPE), "num_classes": 10})


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    fp32, int8 = export_pair(tmp_path_factory.mktemp("src"))
    for p in (fp32, int8):
        write_metadata(p, META)
    return {"model.onnx": fp32, "model.int8.onnx": int8}


@pytest.fixture(scope="module")
def built(sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("first") / "mobile"
    return out, build_mobile(sources, out, target="nnapi", meta=META)


def _run(path: Path, x: np.ndarray, config: dict[str, str] | None = None) -> np.ndarray:
    sess = make_session(path, threads=1, session_config=tuple((config or {}).items()))
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_nnapi_target_ships_fp32_int8_and_batch1_files(built: tuple[Path, dict]) -> None:
    out, res = built
    assert res["files"] == ["model.b1.onnx", "model.b1.ort", "model.int8.b1.onnx", "model.int8.b1.ort",
                            "model.int8.ort", "model.ort", "required_operators.config"]
    assert sorted(p.name for p in out.iterdir()) == res["files"]  # nothing else left behind
    assert res["style"] == "Runtime" and res["fixed"] == {"model.b1.onnx": "model.onnx",
                                                          "model.int8.b1.onnx": "model.int8.onnx"}
    for name, info in res["ort"].items():
        assert info["contrib_ops"] == [] == contrib_ops(out / name), name  # NNAPI/CoreML files: standard ops only
        assert (out / name).stat().st_size == info["bytes"]


def test_int8_ort_outputs_equal_int8_onnx(sources: dict[str, Path], built: tuple[Path, dict]) -> None:
    out, res = built
    x = normalise(raw_images(8, seed=3))
    cfg = res["ort"]["model.int8.ort"]["session_config"]
    assert cfg == {"session.enable_saved_runtime_optimizations": "1"}
    # Runtime style stores the QDQ graph plus the saved fusions; replayed, the CPU EP runs the int8 kernels the
    # .onnx gets at load time: bit-identical outputs.
    src = sources["model.int8.onnx"]
    np.testing.assert_array_equal(_run(out / "model.int8.ort", x, cfg), _run(src, x))
    np.testing.assert_array_equal(_run(out / "model.int8.b1.ort", x[:1], cfg), _run(src, x[:1]))
    # fp32: the same ops, but float sums may be reordered by the fusions (measured ~1e-7): tolerance 1e-5.
    np.testing.assert_allclose(_run(out / "model.ort", x, cfg), _run(sources["model.onnx"], x), atol=1e-5, rtol=0)


def test_metadata_in_every_produced_graph(built: tuple[Path, dict]) -> None:
    out, res = built
    for name in res["files"]:
        if name.endswith((".onnx", ".ort")):
            want = for_file(META, fixed_batch=1) if ".b1." in name else META
            assert read_metadata(out / name) == want, name  # .ort files included: read back through ORT


def test_checker_results_keyed_by_shipped_file_and_on_its_graph(built: tuple[Path, dict]) -> None:
    _, res = built
    assert sorted(res["usability"]) == sorted(res["ort"])
    for name, u in res["usability"].items():
        assert u["error"] is None and u["model"] == name and u["graph_matches_shipped"], (name, u.get("error"))
        assert not any("/tmp" in ln or "lrd-" in ln for ln in u["log"]), name
    # With a dynamic batch NNAPI refuses nodes; the batch-1 copy is what NNAPI takes whole.
    nn_b1 = res["usability"]["model.int8.b1.ort"]["summary"]["NNAPI"]
    assert nn_b1["verdict_as_is"] == "YES" and nn_b1["as_is"]["supported_pct"] == 100.0
    assert res["usability"]["model.int8.ort"]["summary"]["NNAPI"]["verdict_as_is"] == "NO"


def test_conversion_is_byte_reproducible_without_temp_paths(sources: dict[str, Path], built: tuple[Path, dict],
                                                            tmp_path: Path) -> None:
    first, res = built
    # Different folder, different (longer) path, sources copied elsewhere: nothing may depend on where it ran.
    moved = {}
    for n, p in sources.items():
        moved[n] = tmp_path / "elsewhere" / "a_longer_folder_name" / n
        moved[n].parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, moved[n])
    again = build_mobile(moved, tmp_path / "second", target="nnapi", check=False, meta=META)
    assert again["reproducible"] == res["reproducible"] == aslr_can_be_disabled()
    same = {name: (first / name).read_bytes() == (tmp_path / "second" / name).read_bytes() for name in res["files"]}
    if res["reproducible"]:
        assert all(same.values()), same
    else:  # the kernel refused to turn randomisation off (some container seccomp profiles): only .ort may differ
        assert all(v for n, v in same.items() if not n.endswith(".ort")), same
    cfg = (first / "required_operators.config").read_text().splitlines()
    assert cfg[:5] == ["# Generated from model/s:", "# - model.b1.ort", "# - model.int8.b1.ort", "# - model.int8.ort",
                       "# - model.ort"]
    assert not any("/" in ln for ln in cfg if ln.startswith("# - "))


def test_fixed_style_target_allows_contrib_ops_and_others_refuse_them(sources: dict[str, Path], tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    res = build_mobile({"model.onnx": sources["model.onnx"]}, tmp_path / "cpu", target="cpu", check=False)
    assert res["style"] == "Fixed" and "com.microsoft:FusedConv" in res["ort"]["model.ort"]["contrib_ops"]
    assert ("com.microsoft", "FusedConv") in ort_nodes(tmp_path / "cpu" / "model.ort")
    strict = MobileTarget("strict-fixed", "Fixed", allow_contrib=False, fixed_batch=None)
    monkeypatch.setitem(ort_mobile.MOBILE_TARGETS, "strict-fixed", strict)
    with pytest.raises(ValidationError, match="contrib ops"):
        build_mobile({"model.onnx": sources["model.onnx"]}, tmp_path / "strict", target="strict-fixed", check=False)
    with pytest.raises(ConfigError, match="nnapi"):
        build_mobile({}, tmp_path / "x", target="phone")


def test_fix_batch_gives_static_shapes(sources: dict[str, Path], tmp_path: Path) -> None:
    info = fix_batch(sources["model.onnx"], tmp_path / "b1.onnx", 1)
    assert info["dim_params"] == ["batch"]
    sess = make_session(tmp_path / "b1.onnx")
    assert sess.get_inputs()[0].shape == [1, *SHAPE] and sess.get_outputs()[0].shape == [1, 10]
    x = normalise(raw_images(1, seed=9))
    np.testing.assert_allclose(_run(tmp_path / "b1.onnx", x), _run(sources["model.onnx"], x), atol=1e-6, rtol=0)


def test_ship_graph_and_ship_mobile_give_a_consistent_set(sources: dict[str, Path], tmp_path: Path) -> None:
    from exporters.deliverables import deploy_model_json, ship_graph, ship_mobile

    out = tmp_path / "ship"
    out.mkdir()
    plain = ship_graph(sources["model.int8.onnx"], out / "model.int8.onnx", META)
    baked = ship_graph(sources["model.onnx"], out / "model.onnx", META, bake=True)
    assert not read_metadata(out / "model.int8.onnx").baked and read_metadata(out / "model.onnx").baked
    mob = ship_mobile({"model.int8.onnx": out / "model.int8.onnx"}, out, META, target="coreml")
    assert sorted(mob["ort"]) == ["model.int8.b1.ort", "model.int8.ort"] and mob["style"] == "Runtime"
    assert set(mob["ort"]["model.int8.b1.ort"]["usability"]) >= {"NNAPI", "CoreML MLProgram"}
    doc = deploy_model_json(META, {"model.onnx": baked, "model.int8.onnx": plain, **mob["ort"]})
    assert sorted(doc["files"]) == ["model.int8.b1.ort", "model.int8.onnx", "model.int8.ort", "model.onnx"]
    assert doc["files"]["model.onnx"]["baked"] and doc["files"]["model.int8.ort"]["session_config"]


def test_usability_result_is_the_same_wherever_the_model_lies(sources: dict[str, Path], tmp_path: Path) -> None:
    # mobile.json is hashed into the benchmark stage's key: it must not name the (temporary) folder it ran in.
    from exporters.ort_mobile import mobile_usability

    results = []
    for sub in ("a", "a_much_longer_folder/b"):
        p = tmp_path / sub / "model.onnx"
        p.parent.mkdir(parents=True)
        shutil.copyfile(sources["model.onnx"], p)
        results.append(mobile_usability(p))
    assert results[0]["error"] is None and results[0] == results[1]
