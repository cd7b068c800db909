"""The native decoder (native/lrdc) against the Python reference: byte-identical ONNX for every coder, pooled and
per-tensor streams, on an int8 conv net, the same at 4-bit weights and a model of odd tensors; coder corner cases
decoded directly; the CLI's exit codes and its atomic output."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.entropy.coders import CODERS
from pipeline.entropy.container import pack_onnx, unpack_to_onnx
from pipeline.errors import ContainerError
from tests.native.conftest import Batch

CODER_NAMES = ["raw", "zstd", "huffman", "rans", "rans16", "rans16ch", "planes", "auto"]


def c_decode(cli: Path, src: Path, dst: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(cli), str(src), str(dst)], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("model", ["int8", "int4", "odd"])
@pytest.mark.parametrize("coder", CODER_NAMES)
def test_every_coder_byte_identical(native_build: dict[str, Path], batch: Batch, models: dict[str, Path],
                                    tmp_path: Path, coder: str, model: str) -> None:
    for pool in (True, False):
        lrdc = tmp_path / f"{pool}.lrdc"
        stats = pack_onnx(models[model], lrdc, coder=coder, zstd_level=3, pool=pool)
        if coder != "auto":
            assert stats["coders_used"] == [coder]
        want = unpack_to_onnx(lrdc, tmp_path / f"{pool}.py.onnx").read_bytes()
        r = c_decode(native_build["cli"], lrdc, tmp_path / f"{pool}.c.onnx")
        assert r.returncode == 0 and r.stderr == "", r.stderr
        assert (tmp_path / f"{pool}.c.onnx").read_bytes() == want
        assert batch.run([f"F {lrdc} {tmp_path / f'{pool}.asan.onnx'}"]) == ["ok"]
        assert (tmp_path / f"{pool}.asan.onnx").read_bytes() == want


def test_auto_mixes_coders(models: dict[str, Path], tmp_path: Path) -> None:
    # auto on the odd model picks several coders in one container (covered byte-identically above).
    stats = pack_onnx(models["odd"], tmp_path / "a.lrdc", coder="auto", zstd_level=3)
    assert len(stats["coders_used"]) >= 2


def _sources(rng: np.random.Generator) -> list[tuple[str, bytes, int, list[tuple[int, int]] | None]]:
    """(label, symbols, itemsize, segments) corner cases of the coders' formats."""
    lap = np.clip(np.round(rng.laplace(0, 12, 20000)), -127, 127).astype(np.int8).tobytes()
    chans = np.concatenate([np.clip(np.round(rng.laplace(0, s, 4000)), -127, 127)
                            for s in (0.3, 0.3, 30, 30, 0.3, 60, 0.3, 90)])
    return [
        ("empty", b"", 1, None),
        ("one byte", b"\x07", 1, None),
        ("constant", b"\x05" * 1000, 1, None),
        ("two symbols", bytes(rng.integers(0, 2, 777).astype(np.uint8) * 200), 1, None),
        ("16 symbols (packed pairs)", bytes(rng.integers(0, 16, 999).astype(np.uint8) * 3), 1, None),
        ("3 symbols (5 per literal)", bytes(rng.choice([1, 9, 250], 1003).astype(np.uint8)), 1, None),
        ("33 symbols (alphabet bitmap)", bytes(rng.integers(0, 33, 5000).astype(np.uint8)), 1, None),
        ("256 symbols", bytes(rng.integers(0, 256, 70000).astype(np.uint8)), 1, None),
        ("laplace", lap, 1, None),
        ("channels, several tables", chans.astype(np.int8).tobytes(), 1, [(8, 4000)]),
        ("fp32 values", rng.standard_normal(999).astype(np.float32).tobytes(), 4, None),
        ("int16 values", rng.integers(-300, 300, 999).astype(np.int16).tobytes(), 2, None),
    ]


def test_coder_corner_cases_decode_identically(batch: Batch, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    jobs, expect = [], []
    for name in CODERS.names():
        c = CODERS.get(name)
        for i, (label, src, size, segs) in enumerate(_sources(rng)):
            payload = c.encode(src, level=3, itemsize=size, segments=segs)
            assert c.decode(payload, len(src)) == src, (name, label)
            p = tmp_path / f"{name}.{i}.bin"
            p.write_bytes(payload)
            jobs.append(f"C {c.id} {len(src)} {p} {p}.out")
            expect.append((name, label, src, p))
    for res, (name, label, src, p) in zip(batch.run(jobs), expect):
        assert res == "ok", (name, label, res)
        assert Path(f"{p}.out").read_bytes() == src, (name, label)


def test_rans16ch_uses_several_tables() -> None:
    # The channel source above must really exercise more than one table (else the index bits go untested).
    rng = np.random.default_rng(7)
    label, src, _, segs = _sources(rng)[9]
    payload = CODERS.get("rans16ch").encode(src, segments=segs)
    k = payload[1] + 1
    pos = 2
    while payload[pos] & 0x80:
        pos += 1
    pos += 1 + (k if k <= 32 else 32)
    assert payload[pos] > 1, label


def test_cli_exit_codes_and_no_partial_output(native_build: dict[str, Path], models: dict[str, Path],
                                              tmp_path: Path) -> None:
    cli = native_build["cli"]
    r = subprocess.run([str(cli)], capture_output=True, text=True)
    assert r.returncode == 2 and "usage" in r.stderr
    r = c_decode(cli, tmp_path / "missing.lrdc", tmp_path / "o.onnx")
    assert r.returncode == 3 and len(r.stderr.splitlines()) == 1 and not (tmp_path / "o.onnx").exists()
    r = c_decode(cli, models["int8"], tmp_path / "o.onnx")  # an ONNX file is not a container
    assert r.returncode == 1 and "not an LRDC container" in r.stderr and len(r.stderr.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    with pytest.raises(ContainerError):
        unpack_to_onnx(models["int8"], tmp_path / "o.onnx")


def test_unknown_protobuf_fields_keep_their_place(native_build: dict[str, Path], tmp_path: Path) -> None:
    # Fields unknown to onnx.proto (from a newer onnx, say) are serialized after the known ones: raw_data must be
    # inserted before them, and they must survive in the graph and the model.
    import onnx
    from onnx import helper, numpy_helper

    w = numpy_helper.from_array(np.arange(64, dtype=np.int8).reshape(8, 8), "w")
    s = numpy_helper.from_array(np.full(8, 0.1, np.float32), "s")
    w.doc_string = "doc"  # field 12, after raw_data
    tail = bytes([0xA2, 0x01, 0x01, 0x41]) + bytes([0xF8, 0x01, 0x05])  # unknown fields 20 (bytes), 31 (varint)
    w2 = onnx.TensorProto()
    w2.ParseFromString(w.SerializeToString() + tail)
    node = helper.make_node("DequantizeLinear", ["w", "s"], ["y"], axis=0)
    g = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [8, 8])],
                          initializer=[w2, s])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m2 = onnx.ModelProto()
    m2.ParseFromString(m.SerializeToString() + bytes([0xCA, 0x3E, 0x01, 0x42]))  # unknown field 1001 on the model
    (tmp_path / "u.onnx").write_bytes(m2.SerializeToString())
    for coder in ("raw", "rans16"):
        pack_onnx(tmp_path / "u.onnx", tmp_path / "u.lrdc", coder=coder, zstd_level=3)
        want = unpack_to_onnx(tmp_path / "u.lrdc", tmp_path / "u.py.onnx").read_bytes()
        assert tail in want
        r = c_decode(native_build["cli"], tmp_path / "u.lrdc", tmp_path / "u.c.onnx")
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "u.c.onnx").read_bytes() == want
