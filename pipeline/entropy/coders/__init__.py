"""Byte-symbol coders of the LRDC weight container, one module per coder, each with its wire format.

Modules (on-disk id in brackets; never renumber):

* :mod:`.raw` (0), :mod:`.zstd` (1), :mod:`.rans` (2), :mod:`.huffman` (3), :mod:`.planes` (4), :mod:`.rans16` (5),
  :mod:`.rans16ch` (6): ``encode``, ``decode``, ``model_bytes`` and ``CODER`` (a :class:`.base.Coder`);
* shared formats: :mod:`.bits` (bit fields, LEB128), :mod:`.deflate` (literal-only DEFLATE blocks),
  :mod:`.table` (the rANS frequency table and its expansion bound);
* :mod:`.registry` (id/name -> coder, ``encode_auto``), :mod:`.auto` (the selection policy), :mod:`.stats`
  (order-0 entropy).

Which coder for what (measured on int8 weights of a factorized VGG-11, 2-core EPYC; ``auto`` picks per stream):
``huffman`` decodes at ~250-300 MB/s and lands 0.2-0.6 % above the order-0 entropy; ``rans`` within ~0.002
bit/symbol of it but at ~40-45 MB/s; ``rans16`` reaches the entropy at ~200-280 MB/s; ``rans16ch`` adds per-channel
tables; ``zstd`` decodes at ~1 GB/s but costs 1-10 %; ``planes`` codes the byte planes of multi-byte values apart.

Every decoder is told exactly how many bytes to produce, checks that its payload can hold that many before
allocating, and raises :class:`~pipeline.errors.ContainerError` on any problem.
"""
from __future__ import annotations

from pipeline.entropy.coders.auto import AUTO_MIN_SAVING, AUTO_TOLERANCE
from pipeline.entropy.coders.base import Coder
from pipeline.entropy.coders.deflate import canonical_codes, code_lengths
from pipeline.entropy.coders.registry import CODERS, coder_by_id, encode_auto, model_bytes
from pipeline.entropy.coders.stats import order0_entropy
from pipeline.entropy.coders.table import RANS_PRECISION, quantize_frequencies, rans_precision

__all__ = ["AUTO_MIN_SAVING", "AUTO_TOLERANCE", "CODERS", "Coder", "RANS_PRECISION", "canonical_codes",
           "code_lengths", "coder_by_id", "encode_auto", "model_bytes", "order0_entropy", "quantize_frequencies",
           "rans_precision"]
