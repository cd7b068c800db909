"""LRDC, the entropy-coded weight container: an ONNX model's graph and initializers, coded in shared streams.

Modules: :mod:`.format` (file layout, header columns, strict parsing, size bounds), :mod:`.read` (decoding a
container), :mod:`.onnx_io` (an ONNX model as records and back; ``unpack_to_onnx``), :mod:`.items` (the packer's
records and streams), :mod:`.pack` (``pack_onnx``: plan, code, write, verify), :mod:`.stats` (size and entropy
statistics). The public API is re-exported here.
"""
from __future__ import annotations

from pipeline.entropy.container.format import (FORMAT_MAX_BYTES, GRAPH_KEY, MAX_EXPANSION, MAX_HEADER_BYTES,
                                               MAX_TOTAL_BYTES, VERSION)
from pipeline.entropy.container.onnx_io import INLINE_MAX_BYTES, unpack_to_onnx
from pipeline.entropy.container.pack import pack_onnx
from pipeline.entropy.container.read import read_container

__all__ = ["FORMAT_MAX_BYTES", "GRAPH_KEY", "INLINE_MAX_BYTES", "MAX_EXPANSION", "MAX_HEADER_BYTES",
           "MAX_TOTAL_BYTES", "VERSION", "pack_onnx", "read_container", "unpack_to_onnx"]
