"""Decoded sizes are bounded by what a container's records and file size allow: forged sizes are rejected, with the
record and the limit named, before anything of that size is allocated (peak RSS checked in a fresh process)."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.entropy import amplify
from pipeline.entropy.coders import CODERS
from pipeline.entropy.container import MAX_EXPANSION, MAX_TOTAL_BYTES, read_container
from pipeline.entropy.fuzz import seed_containers
from pipeline.errors import ContainerError

ROOT = Path(__file__).resolve().parents[2]
ONE_SYMBOL = ("huffman", "rans", "rans16", "rans16ch")


@pytest.fixture(scope="module")
def seed() -> bytes:
    return seed_containers()[-1]  # the "auto" container


def test_default_limits_are_documented_values() -> None:
    assert MAX_TOTAL_BYTES == 1 << 30 and MAX_EXPANSION == 4096


@pytest.mark.parametrize("coder", ONE_SYMBOL)
def test_one_symbol_stream_declaring_900_mib_names_record_and_limit(seed: bytes, coder: str) -> None:
    n = 900 << 20  # under the 1 GiB total cap: only the expansion limit can tell
    data = amplify.forge(seed, [(CODERS.get(coder).id, amplify.one_symbol_payload(coder, n), n)],
                         [("huge", "uint8", "uint8", [n], 0)])
    assert len(data) < 4096
    with pytest.raises(ContainerError, match=r"max_expansion=4096.*'huge'"):
        read_container(data)
    # Lifting the expansion limit leaves the total cap, which is settable by the caller too.
    with pytest.raises(ContainerError, match=r"'huge'.*max_total_bytes=1000"):
        read_container(data, max_total_bytes=1000, max_expansion=1 << 40)


@pytest.mark.parametrize("coder", ONE_SYMBOL)
def test_one_symbol_stream_within_the_limits_decodes(seed: bytes, coder: str) -> None:
    n = 2 << 20  # 2 MiB from a ~600-byte file: within 4096x
    data = amplify.forge(seed, [(CODERS.get(coder).id, amplify.one_symbol_payload(coder, n, 7), n)],
                         [("z", "uint8", "uint8", [n], 0)])
    with pytest.raises(ContainerError, match="CRC32"):  # forge writes crc32 0: everything before it was accepted
        read_container(data)


def test_narrowed_records_count_at_their_returned_size(seed: bytes) -> None:
    n = 1 << 27  # 128 MiB stored as int8, 1 GiB as the int64 it declares
    data = amplify.forge(seed, [(CODERS.get("rans16").id, amplify.one_symbol_payload("rans16", n), n)],
                         [("wide", "int64", "int8", [n], 0)])
    with pytest.raises(ContainerError, match=r"largest record 'wide': 1073741824 bytes.*max_total_bytes"):
        read_container(data, max_expansion=1 << 40)


@pytest.mark.parametrize("coder,ratio", [("raw", 1), ("zstd", 32768)])
def test_fixed_ratio_coders_checked_in_the_header(seed: bytes, coder: str, ratio: int) -> None:
    payload = CODERS.get(coder).encode(bytes(100), level=3)
    n = ratio * len(payload) + 1
    data = amplify.forge(seed, [(CODERS.get(coder).id, payload, n)], [("w", "uint8", "uint8", [n], 0)])
    with pytest.raises(ContainerError, match=rf"record 'w', coder {coder}.*{ratio}x"):
        read_container(data, max_expansion=1 << 40)


def _laplace(n: int, scale: float = 3.0) -> bytes:
    x = np.clip(np.round(np.random.default_rng(0).laplace(0, scale, n)), -127, 127).astype(np.int8)
    x[:2] = (0, 1)
    return x.tobytes()


@pytest.mark.parametrize("coder,match", [("huffman", "cannot inflate"), ("rans16", "cannot hold")])
def test_multiplied_symbol_count_rejected_by_the_coder_bound(coder: str, match: str) -> None:
    src = _laplace(2000)
    n = 1 << 30
    forged = amplify._with_count(coder, CODERS.get(coder).encode(src), n)
    with pytest.raises(ContainerError, match=match):
        CODERS.get(coder).decode(forged, n)


@pytest.mark.parametrize("coder", ["huffman", "rans", "rans16", "rans16ch", "zstd"])
@pytest.mark.parametrize("n", [10**5, 4 * 10**6])
def test_bounds_accept_the_most_skewed_honest_streams(coder: str, n: int) -> None:
    # Two symbols, one of them once: the fewest bits per symbol an honest stream spends.
    x = np.zeros(n, np.uint8)
    x[n // 2] = 1
    c = CODERS.get(coder)
    payload = c.encode(x.tobytes(), level=3)
    assert len(payload) * 1000 < n or coder == "huffman"  # a real amplification, still accepted
    assert c.decode(payload, n) == x.tobytes()


_RSS_SCRIPT = """
import json, random
from pipeline.entropy import amplify
from pipeline.entropy.container import read_container
from pipeline.entropy.fuzz import peak_rss_mib, seed_containers
from pipeline.errors import ContainerError
seeds = seed_containers()
r = random.Random(7)
kinds = {}
before = peak_rss_mib()
for _ in range(300):
    kind, data = amplify.case(r.choice(seeds), r)
    try:
        read_container(data)
        kinds.setdefault(kind, [0, 0])[1] += 1
    except ContainerError:
        kinds.setdefault(kind, [0, 0])[0] += 1
print(json.dumps({"kinds": kinds, "before_mib": before,
                  "peak_mib": peak_rss_mib()}))
"""


def test_amplification_cases_rejected_without_large_allocations() -> None:
    # A fresh process, so ru_maxrss is this workload's peak and not the test runner's.
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(res["kinds"]) == set(amplify.KINDS)
    assert all(accepted == 0 for _, accepted in res["kinds"].values()), res["kinds"]
    assert res["peak_mib"] < 300, res  # cases declare up to 16 GiB; seeds and imports take ~100 MiB


def test_forge_is_deterministic(seed: bytes) -> None:
    a = amplify.case(seed, random.Random(1))
    b = amplify.case(seed, random.Random(1))
    assert a == b


def test_pack_refuses_what_the_default_reader_would_refuse(tmp_path: Path) -> None:
    import onnx
    from onnx import helper, numpy_helper

    from pipeline.entropy.container import pack_onnx, unpack_to_onnx
    from pipeline.errors import ValidationError

    # A 4 MiB all-zero int8 weight codes to a few bytes: beyond 4096x, so the default reader would refuse it.
    q, s = np.zeros((1 << 11, 1 << 11), np.int8), np.ones(1 << 11, np.float32)
    node = helper.make_node("DequantizeLinear", ["q", "s"], ["w"], axis=0)
    out = helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, list(q.shape))
    graph = helper.make_graph([node], "g", [], [out], [numpy_helper.from_array(q, "q"), numpy_helper.from_array(s, "s")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "z.onnx"))
    with pytest.raises(ValidationError, match="max_expansion"):
        pack_onnx(tmp_path / "z.onnx", tmp_path / "z.lrdc", coder="rans16")
    pack_onnx(tmp_path / "z.onnx", tmp_path / "z.lrdc", coder="rans16", max_expansion=1 << 20)  # a trusting caller
    with pytest.raises(ContainerError, match="max_expansion"):
        unpack_to_onnx(tmp_path / "z.lrdc", tmp_path / "z2.onnx")
    unpack_to_onnx(tmp_path / "z.lrdc", tmp_path / "z2.onnx", max_expansion=1 << 20)
    got = numpy_helper.to_array(onnx.load(str(tmp_path / "z2.onnx")).graph.initializer[0])
    assert got.shape == q.shape and not got.any()
