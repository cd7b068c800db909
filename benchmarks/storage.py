"""Bytes of an artifact as shipped: the file itself plus every external-data file an ONNX model references."""
from __future__ import annotations

import os
from pathlib import Path

from pipeline.errors import InputError


def external_data_files(path: str | Path) -> list[Path]:
    """External-data files referenced by an ONNX model, validated.

    A location must be relative, stay inside the model's folder and not be a symlink: anything else could make the
    pipeline read (and ship) files it did not produce.

    Args:
        path: ``.onnx`` file.

    Returns:
        Unique referenced files, in first-reference order.

    Raises:
        InputError: a location is absolute, escapes the folder, is a symlink, or is missing.
    """
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    p = Path(path)
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:
        raise InputError(f"storage: {p} is not a readable ONNX model: {e}") from e
    root = p.parent.resolve()
    seen: dict[str, Path] = {}
    for t in _get_all_tensors(model):
        if not uses_external_data(t):
            continue
        loc = next((e.value for e in t.external_data if e.key == "location"), None)
        if loc is None:
            raise InputError(f"storage: tensor {t.name!r} of {p.name} uses external data without a location")
        if loc in seen:
            continue
        if os.path.isabs(loc) or Path(loc).is_absolute():
            raise InputError(f"storage: {p.name} references external data at an absolute path {loc!r}; only relative paths are accepted")
        f = p.parent / loc
        if f.is_symlink():
            raise InputError(f"storage: external data {loc!r} of {p.name} is a symlink; refusing to follow it")
        resolved = f.resolve()
        if root not in resolved.parents:
            raise InputError(f"storage: external data {loc!r} of {p.name} escapes the model folder {root}")
        if not resolved.is_file():
            raise InputError(f"storage: external data file {loc!r} of {p.name} is missing")
        seen[loc] = resolved
    return list(seen.values())


def artifact_bytes(path: str | Path) -> int:
    """Size in bytes of an artifact as it would be shipped.

    ``.onnx``: the model file plus its external-data files (each counted once); a folder: every regular file in it;
    anything else (``.ort``, the entropy-coded container): the file size.

    Args:
        path: file or folder.

    Returns:
        Total bytes.

    Raises:
        InputError: the path does not exist, or an ONNX model's external data is unsafe or missing.
    """
    p = Path(path)
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())
    if not p.is_file():
        raise InputError(f"storage: {p} does not exist")
    size = p.stat().st_size
    if p.suffix.lower() == ".onnx":
        size += sum(f.stat().st_size for f in external_data_files(p))
    return size
