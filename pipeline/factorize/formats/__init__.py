"""Registered decomposition formats (one class per file)."""
from __future__ import annotations

from pipeline.factorize.formats.base import Format
from pipeline.factorize.formats.base import MatrixFormat as MatrixFormatType
from pipeline.factorize.formats.channel_svd import ChannelSVD
from pipeline.factorize.formats.cp import CP
from pipeline.factorize.formats.linear_svd import LinearSVD
from pipeline.factorize.formats.spatial_svd import SpatialSVD
from pipeline.factorize.formats.tucker2 import Tucker2
from pipeline.registry import Registry

FORMATS: Registry[Format] = Registry("format")
for _cls in (Tucker2, ChannelSVD, SpatialSVD, CP, LinearSVD):
    FORMATS.add(_cls.name, _cls())

CONV_FORMATS = ("tucker2", "channel_svd", "spatial_svd", "cp")

__all__ = ["FORMATS", "CONV_FORMATS", "Format", "MatrixFormatType"]
