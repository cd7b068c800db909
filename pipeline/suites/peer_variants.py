"""The peers the ``peers`` suite puts beside our shipped files: what an engineer would otherwise reach for.

Built in (always measured): ONNX Runtime static int8 QDQ of the original model (no factorization), fp16 weight
storage of the original, and general-purpose compressors (gzip -9, xz -9e, zstd -19) of each shipped file.
Optional peers (the ``peers`` extra; NNCodec installed by hand, see the README) are detected by import; the suite
lists the ones that are not installed.
"""
from __future__ import annotations

import gzip
import importlib.util
import lzma
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# name -> import name of the optional peer packages the suite measures (pyproject's ``peers`` extra)
OPTIONAL_PEERS = {"NNCF PTQ": "nncf", "tensorly-torch": "tltorch", "Torch-Pruning": "torch_pruning",
                  "NNCodec": "nncodec"}
#: peers the suite does not measure yet (named in its notes so the table is not mistaken for complete)
NOT_MEASURED: tuple[str, ...] = ()


def missing_peers() -> list[str]:
    """The optional peers whose package cannot be imported here."""
    return [name for name, mod in OPTIONAL_PEERS.items() if importlib.util.find_spec(mod) is None]


def fp16_weights(src: Path, dst: Path) -> Path:
    """``src`` with every float32 initializer stored as float16 and cast back to float32 once at load.

    This is fp16 *storage* (half the weight bytes; compute stays fp32, which every ONNX Runtime CPU build runs):
    the fair peer for a size comparison. Each fp16 initializer feeds a ``Cast`` node, which ORT constant-folds when
    the session is created, so inference cost is the fp32 graph's.
    """
    model = onnx.load(str(src))
    graph = model.graph
    casts = []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        arr = numpy_helper.to_array(init)
        if arr.size < 16:  # scalars and shape-like tensors: not worth a node, keep exact
            continue
        half_name = init.name + "__fp16"
        init.CopyFrom(numpy_helper.from_array(arr.astype(np.float16), half_name))
        casts.append(helper.make_node("Cast", [half_name], [half_name[:-len("__fp16")]], to=TensorProto.FLOAT,
                                      name=f"cast_{half_name}"))
    # the Casts go first so the graph stays topologically sorted
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return dst


def _zstd19(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=19).compress(data)


def _unzstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdDecompressor().decompress(data)


# name -> (compress, decompress); the levels are each tool's strongest common setting
COMPRESSORS: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
    "gzip -9": (lambda b: gzip.compress(b, compresslevel=9, mtime=0), gzip.decompress),
    "xz -9e": (lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME), lzma.decompress),
    "zstd -19": (_zstd19, _unzstd),
}


def compress_file(path: Path, name: str, repeats: int = 3) -> dict[str, float]:
    """Size of ``path`` under compressor ``name`` and its decode speed (decoded MB/s, median of ``repeats``).

    Raises:
        AssertionError: the round trip is not bit-exact (never expected: the codecs are lossless).
    """
    enc, dec = COMPRESSORS[name]
    raw = path.read_bytes()
    packed = enc(raw)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = dec(packed)
        times.append(time.perf_counter() - t0)
    assert out == raw, f"{name} round trip of {path.name} is not bit-exact"
    return {"size_bytes": len(packed), "decode_mb_s": len(raw) / 1e6 / max(statistics.median(times), 1e-9)}
