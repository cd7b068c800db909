"""Decode and read speed of an LRDC container (wall-clock timings: vary from run to run, keep them out of hashed
files).

``time_container(path)`` returns

* ``decode_mb_s``: MB of decoded tensor bytes (every stream but the graph's) per second of decoding those streams
  (the coders' work, tables included), the median of ``repeats`` runs;
* ``decode_mb_s_by_coder``: the same per coder name;
* ``read_mb_s``: MB of all decoded bytes per second of whole-file reads (sha256, header validation, every stream,
  CRC32 per record, arrays), the median of ``repeats`` reads.

The entropy-code stage merges these into its metrics (``stats.update(time_container(out))`` after ``pack_onnx``).
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from pipeline.entropy.coders import coder_by_id
from pipeline.entropy.container import read_container
from pipeline.entropy.container.format import FORMAT_MAX_BYTES, parse_header

DECODE_REPEATS = 3


def time_container(path: str | Path, repeats: int = DECODE_REPEATS, max_total_bytes: int = FORMAT_MAX_BYTES,
                   max_expansion: int = 1 << 62) -> dict[str, Any]:
    """Median decode and read speeds of the container at ``path`` over ``repeats`` runs (module docstring).

    The file is one this process trusts (typically just packed), so the reader's limits default to the format's
    ceiling; pass the reader's defaults to time an untrusted file.
    """
    data = Path(path).read_bytes()
    reads = []
    for _ in range(repeats):
        t = time.perf_counter()
        read_container(data, max_total_bytes, max_expansion)
        reads.append(time.perf_counter() - t)
    header, start = parse_header(data, max_total_bytes, max_expansion)
    graph_stream = header["graph"]["stream"]
    by_coder: dict[str, list[float]] = {}
    stream_s = [0.0] * repeats
    tensor_bytes = 0
    for j, s in enumerate(header["streams"]):
        if j == graph_stream:
            continue
        coder = coder_by_id(s["coder"])
        payload = data[start + s["offset"]:start + s["offset"] + s["length"]]
        acc = by_coder.setdefault(coder.name, [0.0] * (1 + repeats))
        acc[0] += s["nbytes"]
        tensor_bytes += s["nbytes"]
        for i in range(repeats):
            t = time.perf_counter()
            coder.decode(payload, s["nbytes"])
            dt = time.perf_counter() - t
            acc[1 + i] += dt
            stream_s[i] += dt
    total = sum(s["nbytes"] for s in header["streams"])
    decode_s, read_s = statistics.median(stream_s), statistics.median(reads)
    return {
        "decode_mb_s": tensor_bytes / 1e6 / decode_s if decode_s > 0 else float("inf"),
        "read_mb_s": total / 1e6 / read_s if read_s > 0 else float("inf"),
        "decode_mb_s_by_coder": {k: (v[0] / 1e6 / statistics.median(v[1:]) if statistics.median(v[1:]) > 0
                                     else float("inf")) for k, v in by_coder.items()},
    }
