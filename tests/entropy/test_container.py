"""LRDC container: round trips, ORT parity after unpacking, determinism, and strict rejection of bad files."""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from benchmarks.decode_timing import time_container
from pipeline.config import QuantizeConfig
from pipeline.entropy.container import format as F
from pipeline.entropy.container import GRAPH_KEY, INLINE_MAX_BYTES, pack_onnx, read_container, unpack_to_onnx
from pipeline.entropy.fuzz import split_container
from pipeline.errors import ContainerError, InputError
from pipeline.quantize.ort_static import quantize_static
from tests.helpers.containers import GRAPH_LEVEL, header_mutations, identity_model
from tests.helpers.onnx_models import export, images, run, tiny_net


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("c")
    fp32 = export(tiny_net(0), d / "fp32.onnx")
    quantize_static(fp32, d / "int8.onnx", images(8), QuantizeConfig(calib_size=8))
    return d / "int8.onnx"


@pytest.fixture(scope="module")
def packed(int8_model: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    out = tmp_path_factory.mktemp("p") / "w.lrdc"
    pack_onnx(int8_model, out)
    return out.read_bytes()


def _split(data: bytes) -> tuple[dict, bytes]:
    raw, payload = split_container(data)
    return json.loads(raw), payload


def _build(header: dict, payload: bytes, version: int = F.VERSION, raw_header: bytes | None = None,
           header_coder: int | None = None) -> bytes:
    """A container with a valid sha256 around an arbitrary header: reaches the checks behind the hash."""
    h = raw_header if raw_header is not None else F.canonical(header)
    return F.seal(h, payload, version=version, header_coder=header_coder)


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_graph_record_is_coded_at_the_graph_level(int8_model: Path, tmp_path: Path) -> None:
    from pipeline.entropy.coders import zstd as zstd_coder
    from pipeline.entropy.container.pack import GRAPH_ZSTD_LEVEL

    out = tmp_path / "w.lrdc"
    pack_onnx(int8_model, out, coder="zstd", zstd_level=3)
    header, arrays = read_container(out)
    graph = arrays[GRAPH_KEY].tobytes()
    first = header["streams"][header["graph"]["stream"]]
    # the weights' streams use the configured level; the graph's is never coded below GRAPH_ZSTD_LEVEL
    assert header["zstd_level"] == 3
    assert first["length"] == len(zstd_coder.encode(graph, level=GRAPH_ZSTD_LEVEL))
    assert first["length"] <= len(zstd_coder.encode(graph, level=3))


@pytest.mark.parametrize("coder", ["raw", "zstd", "rans", "huffman", "planes", "rans16", "rans16ch", "auto"])
def test_pack_unpack_parity(int8_model: Path, tmp_path: Path, coder: str) -> None:
    out = tmp_path / "w.lrdc"
    stats = pack_onnx(int8_model, out, coder=coder, zstd_level=3)
    assert stats["size_bytes"] == out.stat().st_size and stats["weight_numel"] == 8 * 27 + 16 * 72 + 64 * 10
    if coder != "auto":
        assert stats["coders_used"] == [coder]
    w = [t for t in stats["tensors"] if t["is_weight"]]
    assert len(w) == 3 and all(t["dtype"] == "int8" for t in w)
    assert 0 < stats["order0_bits_per_weight"] <= 8
    rebuilt = unpack_to_onnx(out, tmp_path / "un.onnx")
    x = images(16, seed=7)
    np.testing.assert_array_equal(run(rebuilt, x), run(int8_model, x))  # exactly identical outputs
    src = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(int8_model)).graph.initializer}
    _, arrays = read_container(out)
    # Tensors of <= INLINE_MAX_BYTES that are not weights (activation scales, zero points) stay in the graph record.
    assert set(arrays) == {k for k, v in src.items() if v.nbytes > INLINE_MAX_BYTES} | {GRAPH_KEY}
    assert {t["name"] for t in stats["tensors"] if t["is_weight"]} <= set(arrays)
    back = _initializers(rebuilt)
    for k, v in src.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and back[k].tobytes() == v.tobytes()
        if k in arrays:
            assert arrays[k].dtype == v.dtype and arrays[k].shape == v.shape and arrays[k].tobytes() == v.tobytes()


def test_pack_is_deterministic_and_repack_identical(int8_model: Path, packed: bytes, tmp_path: Path) -> None:
    pack_onnx(int8_model, tmp_path / "a.lrdc")
    assert (tmp_path / "a.lrdc").read_bytes() == packed
    unpack_to_onnx(tmp_path / "a.lrdc", tmp_path / "un.onnx")
    pack_onnx(tmp_path / "un.onnx", tmp_path / "b.lrdc")
    assert (tmp_path / "b.lrdc").read_bytes() == packed


def test_lossless_narrowing_and_odd_tensors(tmp_path: Path) -> None:
    # fp16-exact float32 (incl. -0.0, inf, NaN), int64 that fits int8, scalars, empty tensors, bool, float64.
    f = np.array([0.5, -0.0, np.inf, np.nan, 1024.0, 2.0**-14], np.float32)
    g = np.array([0.1, 1.0], np.float32)  # 0.1 is not fp16-exact: stays float32
    inits = {"f": f, "g": g, "i": np.array([-3, 7, 100], np.int64), "s": np.array(2.5, np.float32),
             "e": np.zeros((0, 3), np.float32), "b": np.array([True, False]), "d": np.array([1e-300])}
    nodes = [helper.make_node("Identity", [k], [k + "_out"]) for k in inits]
    graph = helper.make_graph(nodes, "g", [], [helper.make_tensor_value_info(k + "_out", helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                                             for k, v in inits.items()],
                              initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "m.onnx"))
    stats = pack_onnx(tmp_path / "m.onnx", tmp_path / "m.lrdc")
    stored = {t["name"]: t["stored_dtype"] for t in stats["tensors"]}
    assert stored == {"f": "float16", "i": "int8"}  # the others are <= 16 bytes: they stay in the graph record
    assert np.isnan(stats["total_bits_per_weight"])  # no int8 weights in this model
    _, arrays = read_container(tmp_path / "m.lrdc")
    for k in stored:
        v = inits[k]
        assert arrays[k].dtype == v.dtype and arrays[k].shape == v.shape and arrays[k].tobytes() == v.tobytes()
    big = {f"{k}_big": np.resize(v, 64) for k, v in inits.items() if v.size}  # over the inline limit: records
    stats = pack_onnx(identity_model(big, tmp_path / "big.onnx"), tmp_path / "big.lrdc")
    stored = {t["name"]: t["stored_dtype"] for t in stats["tensors"]}
    assert stored == {"f_big": "float16", "g_big": "float32", "i_big": "int8", "s_big": "float16", "b_big": "bool",
                      "d_big": "float64"}
    _, arrays = read_container(tmp_path / "big.lrdc")
    for k, v in big.items():
        assert arrays[k].dtype == v.dtype and arrays[k].shape == v.shape and arrays[k].tobytes() == v.tobytes()
    out = unpack_to_onnx(tmp_path / "m.lrdc", tmp_path / "u.onnx")
    for a, b in zip(onnx.load(str(out)).graph.initializer, model.graph.initializer):
        assert numpy_helper.to_array(a).tobytes() == numpy_helper.to_array(b).tobytes()


def test_pack_rejects_bad_inputs(tmp_path: Path) -> None:
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(InputError):
        pack_onnx(tmp_path / "bad.onnx", tmp_path / "o.lrdc")
    with pytest.raises(InputError):
        pack_onnx(tmp_path / "missing.onnx", tmp_path / "o.lrdc")
    assert not (tmp_path / "o.lrdc").exists()


def test_truncations_rejected(packed: bytes) -> None:
    for cut in sorted({0, 1, 5, 9, 10, 11, 40, len(packed) // 2, len(packed) - 33, len(packed) - 32, len(packed) - 1}):
        with pytest.raises(ContainerError):
            read_container(packed[:cut])
    with pytest.raises(ContainerError, match="sha256"):
        read_container(packed + b"\0")  # trailing bytes


def test_bit_flips_rejected(packed: bytes) -> None:
    rng = np.random.default_rng(0)
    positions = set(range(0, 12)) | set(rng.integers(0, len(packed), 300).tolist()) | set(range(len(packed) - 32, len(packed)))
    for pos in sorted(positions):
        bad = bytearray(packed)
        bad[pos] ^= 1 << (pos % 8)
        with pytest.raises(ContainerError):
            read_container(bytes(bad))


@pytest.mark.parametrize("old", [2, 4])
def test_other_versions_are_refused(packed: bytes, old: int) -> None:
    header, payload = _split(packed)
    with pytest.raises(ContainerError, match=f"version {old} is not supported"):
        read_container(_build(header, payload, version=old))


@pytest.mark.parametrize("bad_coder", [2, 3, 4, 255])  # the header is raw or zstd, nothing else
def test_header_coder_must_be_raw_or_zstd(packed: bytes, bad_coder: int) -> None:
    bad = bytearray(packed)
    bad[10] = bad_coder
    with pytest.raises(ContainerError, match="header coder"):
        read_container(bytes(bad))


def test_prefix_errors_have_clear_messages(packed: bytes) -> None:
    with pytest.raises(ContainerError, match="not an LRDC container"):
        read_container(b"ONNX" + packed[4:])
    header, payload = _split(packed)
    v1 = b"LRDC" + struct.pack("<HI", 1, 2) + b"{}" + bytes(40)  # the version-1 layout: re-pack, says the message
    with pytest.raises(ContainerError, match="version 1 is not supported.*re-pack"):
        read_container(v1 + hashlib.sha256(v1).digest())
    big = bytearray(packed)
    struct.pack_into("<I", big, 6, 0xFFFFFFFF)
    with pytest.raises(ContainerError, match="header length"):
        read_container(bytes(big))
    bad = bytearray(packed)
    struct.pack_into("<I", bad, 11, len(packed))
    with pytest.raises(ContainerError, match="coded header length"):
        read_container(bytes(bad))
    raw_json = F.canonical(header)
    assert read_container(_build(header, payload, header_coder=0))[0] == read_container(packed)[0]  # raw header: valid
    assert packed[10] == 1 and struct.unpack_from("<I", packed, 11)[0] < len(raw_json)  # the packer chose zstd
    lying = bytearray(_build(header, payload, header_coder=1))
    struct.pack_into("<I", lying, 6, len(raw_json) + 1)  # declared size != the zstd frame's
    lying = bytes(lying[:-32]) + hashlib.sha256(bytes(lying[:-32])).digest()
    with pytest.raises(ContainerError, match="zstd frame declares"):
        read_container(lying)
    with pytest.raises(ContainerError, match="cannot read"):
        read_container(Path("/nonexistent/x.lrdc"))


def test_header_validation_behind_a_valid_hash(packed: bytes, tmp_path: Path) -> None:
    header, payload = _split(packed)
    read_container(_build(header, payload))  # the rebuilt original is valid
    for what, h in header_mutations(header).items():
        with pytest.raises(ContainerError):
            if what in GRAPH_LEVEL:  # consistent in itself: rejected when the graph is rebuilt
                (tmp_path / "m.lrdc").write_bytes(_build(h, payload))
                unpack_to_onnx(tmp_path / "m.lrdc", tmp_path / "m.onnx")
            else:
                read_container(_build(h, payload))
            pytest.fail(what)
        assert not (tmp_path / "m.onnx").exists(), what
    raw = F.canonical(header)
    for what, rh in {"whitespace": json.dumps(header, sort_keys=True).encode(),
                     "duplicate key": b'{"format":"LRDC",' + raw[1:],
                     "not json": b"{" * 10, "deep nesting": b"[" * 100000 + b"]" * 100000,
                     "not ascii": raw.replace(b"LRDC", "LRDÇ".encode(), 1), "not an object": b"[1]"}.items():
        with pytest.raises(ContainerError):
            read_container(_build({}, payload, raw_header=rh))
            pytest.fail(what)
    with pytest.raises(ContainerError, match="payload area"):
        read_container(_build(header, payload + b"\0"))
    with pytest.raises(ContainerError, match="max_total_bytes=100"):
        read_container(packed, max_total_bytes=100)


def test_huge_declared_sizes_do_not_allocate(packed: bytes) -> None:
    # A forged record claims a 1 TiB tensor: rejected by a size bound before any decoder runs.
    header, payload = _split(packed)
    rec = header["records"]
    last = max(range(len(rec["start"])), key=lambda i: rec["start"][i])  # it ends its stream
    header["streams"]["nbytes"][rec["stream"][last]] += 2**40 - rec["nbytes"][last]
    rec["shape"][last], rec["dtype"][last], rec["stored_dtype"][last] = [2**20, 2**20], "uint8", "uint8"
    rec["nbytes"][last] = 2**40
    with pytest.raises(ContainerError, match="limit"):  # test_bounds.py has one test per bound
        read_container(_build(header, payload))


def test_unpack_rejects_graph_tensor_disagreement(packed: bytes, tmp_path: Path) -> None:
    header, payload = _split(packed)
    # Rename a record: the CRC still matches, but the graph has no initializer of that name.
    header["records"]["name"][1] = "ghost"
    (tmp_path / "x.lrdc").write_bytes(_build(header, payload))
    with pytest.raises(ContainerError, match="ghost"):
        unpack_to_onnx(tmp_path / "x.lrdc", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_header_is_stored_as_columns_and_read_as_rows(packed: bytes) -> None:
    header, _ = _split(packed)
    assert sorted(header) == ["format", "producer", "records", "streams", "version", "zstd_level"]
    rows, _ = read_container(packed)
    names = header["records"]["name"]
    assert names[0] == GRAPH_KEY and rows["graph"]["name"] == GRAPH_KEY
    assert [r["name"] for r in rows["tensors"]] == names[1:]
    assert [s["nbytes"] for s in rows["streams"]] == header["streams"]["nbytes"]
    assert all(r["crc32"] == c for r, c in zip([rows["graph"], *rows["tensors"]], header["records"]["crc32"]))


def test_realistic_laplacian_weights_within_one_percent_of_order0(tmp_path: Path) -> None:
    # One conv-sized int8 tensor (per-channel max-abs quantized Laplacian) with its per-channel fp32 scales.
    rng = np.random.default_rng(0)
    w = rng.laplace(0, 1, (256, 96, 3, 3)) * rng.uniform(0.5, 2, (256, 1, 1, 1))
    s = (np.abs(w).reshape(256, -1).max(1) / 127).astype(np.float32)
    q = np.clip(np.round(w / s[:, None, None, None]), -127, 127).astype(np.int8)
    path = identity_model({"w_q": q, "w_s": s}, tmp_path / "m.onnx", dq={"w": ("w_q", "w_s")})
    stats = pack_onnx(path, tmp_path / "m.lrdc", zstd_level=3)
    assert stats["total_bits_per_weight"] < 1.005 * stats["order0_bits_per_weight"]
    by_name = {t["name"]: t for t in stats["tensors"]}
    # Compiled rANS; channels of different spread (random per-channel scale) may earn tables of their own.
    assert by_name["w_q"]["coder"] in ("rans16", "rans16ch") and by_name["w_q"]["is_weight"]
    # fp32 scales are not fp16-exact: stored fp32 (bit-exact dequantization), byte planes coded on their own.
    assert by_name["w_s"]["stored_dtype"] == "float32" and by_name["w_s"]["coder"] == "planes"
    assert by_name["w_s"]["bytes"] < 0.85 * s.nbytes
    speeds = time_container(tmp_path / "m.lrdc", repeats=2)
    assert speeds["decode_mb_s"] > 0 and speeds["read_mb_s"] > 0
    assert set(speeds["decode_mb_s_by_coder"]) == {by_name["w_q"]["coder"], "planes"}  # not the graph's zstd stream
    _, arrays = read_container(tmp_path / "m.lrdc")
    assert arrays["w_q"].tobytes() == q.tobytes() and arrays["w_s"].tobytes() == s.tobytes()


def test_low_bit_grids_and_every_coder_bit_exact(tmp_path: Path) -> None:
    # 2-, 3- and 4-bit grids inside int8 (quantize.weight_bits), odd sizes (padding of packed literals), int32 biases.
    rng = np.random.default_rng(1)
    inits = {}
    for bits, n in ((2, 1001), (3, 4097), (4, 30001)):
        lvl = 2 ** (bits - 1) - 1
        inits[f"g{bits}"] = (np.clip(np.round(rng.laplace(0, lvl / 2, n)), -lvl, lvl) * (127 // lvl)).astype(np.int8)
    inits["bias"] = rng.integers(-2**20, 2**20, 333).astype(np.int32)
    path = identity_model(inits, tmp_path / "m.onnx")
    for coder in ("auto", "huffman", "rans", "rans16", "rans16ch", "planes"):
        pack_onnx(path, tmp_path / f"{coder}.lrdc", coder=coder, zstd_level=3)  # verifies decode + re-encode itself
        _, arrays = read_container(tmp_path / f"{coder}.lrdc")
        for k, v in inits.items():
            assert arrays[k].dtype == v.dtype and arrays[k].tobytes() == v.tobytes()


@st.composite
def _tensors(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """1-4 tensors of random dtype and shape; values random, constant, small-alphabet or full-range."""
    out = {}
    for i in range(draw(st.integers(1, 4))):
        dtype = np.dtype(draw(st.sampled_from(["int8", "uint8", "int16", "int32", "int64", "float16", "float32"])))
        shape = tuple(draw(st.lists(st.integers(0, 40), min_size=0, max_size=3)))
        n = int(np.prod(shape))
        r = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        kind = draw(st.sampled_from(["bytes", "constant", "alphabet", "laplace"]))
        if kind == "bytes":
            v = np.frombuffer(r.bytes(n * dtype.itemsize), dtype=dtype)
        elif kind == "constant":
            v = np.frombuffer(r.bytes(dtype.itemsize), dtype=dtype).repeat(n)
        elif kind == "alphabet":
            v = np.frombuffer(r.bytes(dtype.itemsize * 5), dtype=dtype)[r.integers(0, draw(st.integers(1, 5)), n)]
        else:
            v = np.clip(np.round(r.laplace(0, 20, n)), -100, 100).astype(dtype)
        if dtype.kind == "f":
            v = np.where(np.isnan(v), 0, v).astype(dtype)  # NaN payloads are covered by the narrowing test
        out[f"t{i}"] = np.array(v, dtype=dtype).reshape(shape)
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(inits=_tensors(), coder=st.sampled_from(["auto", "huffman", "rans", "rans16", "rans16ch", "planes", "zstd"]),
       pool=st.booleans())
def test_random_tensors_round_trip_bit_exact(tmp_path: Path, inits: dict[str, np.ndarray], coder: str,
                                             pool: bool) -> None:
    path = identity_model(inits, tmp_path / "r.onnx")
    pack_onnx(path, tmp_path / "r.lrdc", coder=coder, zstd_level=3, pool=pool)  # checks decode -> re-encode too
    arrays = _initializers(unpack_to_onnx(tmp_path / "r.lrdc", tmp_path / "u.onnx"))
    for k, v in inits.items():
        assert arrays[k].dtype == v.dtype and arrays[k].shape == v.shape and arrays[k].tobytes() == v.tobytes()
