"""Corrupt containers: the cases the Python reader rejects (tests/entropy/test_container.py) are rejected by the
native decoder too: exit code 1, one line on stderr, no output file, no sanitizer report."""
from __future__ import annotations

import copy
import json
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.entropy.container import pack_onnx, read_container, unpack_to_onnx
from pipeline.errors import ContainerError
from tests.helpers.containers import header_mutations
from tests.native.conftest import Batch
from tests.native.lrdc_tools import canonical, reseal, seal, split


@pytest.fixture(scope="module")
def packed(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> bytes:
    out = tmp_path_factory.mktemp("p") / "w.lrdc"
    pack_onnx(models["int8"], out)
    return out.read_bytes()


def _python_rejects(data: bytes, tmp: Path) -> bool:
    p = tmp / "py.lrdc"
    p.write_bytes(data)
    try:
        unpack_to_onnx(p, tmp / "py.onnx")
    except ContainerError:
        return True
    return False


def _assert_both_reject(cli: Path, cases: dict[str, bytes], tmp: Path) -> None:
    for what, data in cases.items():
        assert _python_rejects(data, tmp), what
        src, dst = tmp / "c.lrdc", tmp / "c.onnx"
        src.write_bytes(data)
        r = subprocess.run([str(cli), str(src), str(dst)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 1, (what, r.returncode, r.stderr)
        assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("lrdc-decode: "), (what, r.stderr)
        assert not dst.exists() and not list(tmp.glob("c.onnx.tmp*")), what


def test_truncations_and_trailing_bytes(native_build: dict[str, Path], packed: bytes, tmp_path: Path) -> None:
    cuts = sorted({0, 1, 5, 9, 10, 11, 40, len(packed) // 2, len(packed) - 33, len(packed) - 32, len(packed) - 1})
    cases = {f"cut {c}": packed[:c] for c in cuts}
    cases["trailing byte"] = packed + b"\0"
    _assert_both_reject(native_build["cli"], cases, tmp_path)


def test_bit_flips(batch: Batch, packed: bytes, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    positions = set(range(0, 12)) | set(rng.integers(0, len(packed), 300).tolist()) | set(range(len(packed) - 32, len(packed)))
    jobs = []
    for pos in sorted(positions):
        bad = bytearray(packed)
        bad[pos] ^= 1 << (pos % 8)
        with pytest.raises(ContainerError):
            read_container(bytes(bad))
        p = tmp_path / f"{pos}.lrdc"
        p.write_bytes(bytes(bad))
        jobs.append(f"F {p} {p}.onnx")
    results = batch.run(jobs)
    assert all(r.startswith("err ") for r in results)
    assert not list(tmp_path.glob("*.onnx"))


def test_prefix_errors(native_build: dict[str, Path], packed: bytes, tmp_path: Path) -> None:
    raw, payload = split(packed)
    cases = {"magic": b"ONNX" + packed[4:]}
    for v in (1, 2, 4):
        cases[f"version {v}"] = seal(raw, payload, version=v)
    big = bytearray(packed)
    struct.pack_into("<I", big, 6, 0xFFFFFFFF)
    cases["header length"] = bytes(big)
    for coder in (2, 3, 4, 255):
        bad = bytearray(packed)
        bad[10] = coder
        cases[f"header coder {coder}"] = bytes(bad)
        cases[f"header coder {coder}, resealed"] = reseal(bytes(bad[:-32]))
    bad = bytearray(packed)
    struct.pack_into("<I", bad, 11, len(packed))
    cases["coded header length"] = bytes(bad)
    cases["declared header size != zstd frame"] = seal(raw, payload, hlen=len(raw) + 1)
    cases["raw header of the wrong length"] = seal(raw, payload, header_coder=0, hlen=len(raw) - 1)
    _assert_both_reject(native_build["cli"], cases, tmp_path)
    # The raw-coded header is valid, and decodes to the same model.
    ok = tmp_path / "raw.lrdc"
    ok.write_bytes(seal(raw, payload, header_coder=0))
    want = unpack_to_onnx(ok, tmp_path / "raw.py.onnx").read_bytes()
    r = subprocess.run([str(native_build["cli"]), str(ok), str(tmp_path / "raw.c.onnx")], capture_output=True)
    assert r.returncode == 0 and (tmp_path / "raw.c.onnx").read_bytes() == want


def test_header_validation_behind_a_valid_hash(native_build: dict[str, Path], packed: bytes, tmp_path: Path) -> None:
    raw, payload = split(packed)
    header = json.loads(raw)
    cases = {what: seal(canonical(h), payload) for what, h in header_mutations(header).items()}
    cases.update({what: seal(rh, payload) for what, rh in {
        "whitespace": json.dumps(header, sort_keys=True).encode(),
        "duplicate key": b'{"format":"LRDC",' + raw[1:],
        "keys out of order": json.dumps(dict(reversed(list(header.items()))), separators=(",", ":")).encode(),
        "not json": b"{" * 10, "deep nesting": b"[" * 100000 + b"]" * 100000,
        "not ascii": raw.replace(b"LRDC", "LRDÇ".encode(), 1), "not an object": b"[1]",
        "escaped slash": raw.replace(b'"format"', b'"form\\/at"', 1),
        "uppercase escape": raw.replace(b'"LRDC"', b'"LRD\\u00C7"', 1),
        "needless escape": raw.replace(b'"LRDC"', b'"LRD\\u0043"', 1),
        "trailing bytes": raw + b" ", "leading zero": raw.replace(b'"zstd_level":', b'"zstd_level":0', 1),
        "true": raw.replace(b'"zstd_level":19', b'"zstd_level":true', 1),
        "null": raw.replace(b'"zstd_level":19', b'"zstd_level":null', 1),
    }.items()})
    cases["payload area too long"] = seal(raw, payload + b"\0")
    # A forged record claims a 1 TiB tensor: the size cap rejects it before any decoder runs.
    h = copy.deepcopy(header)
    rec = h["records"]
    last = max(range(len(rec["start"])), key=lambda i: rec["start"][i])
    h["streams"]["nbytes"][rec["stream"][last]] += 2**40 - rec["nbytes"][last]
    rec["shape"][last], rec["dtype"][last], rec["stored_dtype"][last] = [2**20, 2**20], "uint8", "uint8"
    rec["nbytes"][last] = 2**40
    cases["1 TiB record"] = seal(canonical(h), payload)
    _assert_both_reject(native_build["cli_asan"], cases, tmp_path)


def test_canonical_variants_both_accept(native_build: dict[str, Path], packed: bytes, tmp_path: Path) -> None:
    # What Python accepts beyond the packer's own output must decode identically: a float version 3.0 and
    # escaped non-ASCII producer strings (lone surrogates included).
    raw, payload = split(packed)
    for what, rh in {"version 3.0": raw.replace(b'"version":3', b'"version":3.0', 1),
                     "escaped producer": raw.replace(b'"producer":"', b'"producer":"\\u00e9\\ud83d\\ude00\\udc00\\n', 1)}.items():
        src = tmp_path / "v.lrdc"
        src.write_bytes(seal(rh, payload))
        want = unpack_to_onnx(src, tmp_path / "v.py.onnx").read_bytes()
        r = subprocess.run([str(native_build["cli_asan"]), str(src), str(tmp_path / "v.c.onnx")], capture_output=True,
                           text=True)
        assert r.returncode == 0, (what, r.stderr)
        assert (tmp_path / "v.c.onnx").read_bytes() == want, what
