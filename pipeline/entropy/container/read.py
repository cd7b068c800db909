"""Reading an LRDC container: the validated header (:mod:`.format`), then every stream decoded, bounded and checked."""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.entropy.coders import coder_by_id
from pipeline.entropy.container.format import (DTYPE, DTYPE_LE, GRAPH_KEY, MAX_EXPANSION, MAX_HEADER_BYTES,
                                               MAX_TOTAL_BYTES, parse_header)
from pipeline.errors import ContainerError


def read_container(path_or_bytes: str | Path | bytes | bytearray | memoryview,
                   max_total_bytes: int = MAX_TOTAL_BYTES, max_expansion: int = MAX_EXPANSION,
                   ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Parse and decode an LRDC container strictly.

    Args:
        path_or_bytes: a file path, or the container's bytes.
        max_total_bytes: cap on the decoded bytes, stored and as returned (checked before any decoding; default
            ``MAX_TOTAL_BYTES``, 1 GiB).
        max_expansion: cap on the decoded bytes per byte of the file (default ``MAX_EXPANSION``, 4096).

    Returns:
        ``(header, arrays)``: the validated header as rows (``{"format", "version", "producer", "zstd_level",
        "streams": [stream], "graph": record, "tensors": [record]}``), and every tensor by name in its logical dtype
        and shape, plus the graph bytes as a uint8 array under ``GRAPH_KEY``.

    Raises:
        ContainerError: on any problem (corrupt, truncated, modified, unknown version, over a limit, bad payload).
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        data = bytes(path_or_bytes)
    else:
        p = Path(path_or_bytes)
        try:
            size = p.stat().st_size
            if size > max_total_bytes + MAX_HEADER_BYTES + (64 << 20):
                raise ContainerError(f"{p}: {size} bytes is larger than any container this reader accepts")
            data = p.read_bytes()
        except OSError as e:
            raise ContainerError(f"cannot read container {p}: {e}") from None
    header, start = parse_header(data, max_total_bytes, max_expansion)
    streams = header["streams"]
    decoded = []
    for j, s in enumerate(streams):
        payload = data[start + s["offset"]:start + s["offset"] + s["length"]]
        raw = coder_by_id(s["coder"]).decode(payload, s["nbytes"])
        if len(raw) != s["nbytes"]:  # coders guarantee this; kept as a cheap belt-and-braces check
            raise ContainerError(f"LRDC stream {j} decoded to {len(raw)} bytes, expected {s['nbytes']}")
        decoded.append(bytearray(raw))  # one writable copy per stream: records below are views into it
    arrays: dict[str, np.ndarray] = {}
    for i, r in enumerate([header["graph"], *header["tensors"]]):
        buf, at, size = decoded[r["stream"]], r["start"], r["nbytes"]
        if zlib.crc32(memoryview(buf)[at:at + size]) & 0xFFFFFFFF != r["crc32"]:
            raise ContainerError(f"LRDC record {r['name']!r}: CRC32 mismatch after decoding (corrupt payload)")
        sd = DTYPE_LE[r["stored_dtype"]]
        stored = np.frombuffer(buf, dtype=sd, count=size // sd.itemsize, offset=at).reshape(r["shape"])
        if r["stored_dtype"] == "bool" and stored.size and stored.view(np.uint8).max() > 1:
            raise ContainerError(f"LRDC record {r['name']!r}: bool tensor holds values other than 0/1")
        # A writable view when the stored form is the logical one in native order and aligned; else a converted copy.
        if r["stored_dtype"] != r["dtype"] or not sd.isnative or at % sd.itemsize:
            stored = stored.astype(DTYPE[r["dtype"]])
        arrays[GRAPH_KEY if i == 0 else r["name"]] = stored
    return header, arrays
