"""The run's model and dataset specs, parsed once: what kind of input they name, their folder slug, their content
fingerprint and validation. Every other module asks these objects instead of re-parsing the strings.

Model specs: a zoo name (``vgg11``), a Python factory (``path/to/file.py:factory``) or an ONNX file
(``path/to/model.onnx``). Dataset specs: ``name`` or ``name:PATH``.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.artifacts import sha256_file
from pipeline.errors import ConfigError, InputError
from pipeline.validate_args import check_input_file

ZOO, FILE, ONNX = "zoo", "file", "onnx"


def file_fingerprint(path: str | Path) -> str:
    """sha256 of a file's content; for a folder, of its files' names, sizes and mtimes; ``"missing"`` otherwise."""
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    if p.is_dir():
        # A data folder: hash names, sizes and mtimes (reading every image would be slow for big folders).
        h = hashlib.sha256()
        for f in sorted(p.rglob("*")):
            if f.is_file():
                st = f.stat()
                h.update(f"{f.relative_to(p)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return h.hexdigest()
    return "missing"


@dataclass(frozen=True)
class ModelSpec:
    """A parsed ``--model``: ``kind`` is ``"zoo"`` (``name``), ``"file"`` (``path`` + ``factory``) or ``"onnx"``
    (``path``). ``text`` is the string as given (what checkpoints and reports record)."""

    text: str
    kind: str
    name: str = ""
    path: str = ""
    factory: str = ""

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        """Parse a model spec string; raises ConfigError/InputError for a malformed one (the fix named)."""
        if not isinstance(text, str) or not text:
            raise ConfigError(f"model spec {text!r} is empty; use a zoo name (see `list models`), "
                              f"'path/to/file.py:factory' or 'model.onnx'")
        if text.endswith(".onnx"):
            return cls(text, ONNX, path=text)
        head, sep, tail = text.rpartition(":")
        if sep and head.endswith(".onnx"):
            raise ConfigError(f"model {text!r} is an ONNX file, which takes no factory; pass '{head}' alone")
        if sep and head.endswith(".py"):
            return cls(text, FILE, path=head, factory=tail)
        if text.endswith(".py"):
            raise InputError(f"model spec {text!r} names a file but no factory; write it as '{text}:factory_name'")
        return cls(text, ZOO, name=text)

    @property
    def is_onnx(self) -> bool:
        """Whether the model is an ONNX file (fed images as stored, no dataset normalisation)."""
        return self.kind == ONNX

    @property
    def is_file(self) -> bool:
        """Whether the model comes from a user's file (``.py`` factory or ``.onnx``)."""
        return self.kind in (FILE, ONNX)

    @property
    def slug(self) -> str:
        """Folder name under the artifacts root: the zoo name, or the user's file stem with its kind.

        A user's file never gets a zoo name's folder (``my/tiny.py:make`` -> ``tiny.py-make``, ``net.onnx`` ->
        ``net.onnx``): zoo names carry no dot, so a user's model cannot overwrite a built-in one's deliverables.
        """
        if not self.is_file:
            return re.sub(r"[^A-Za-z0-9_-]+", "_", self.text).strip("_") or "model"
        stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(self.path).stem).strip("_") or "model"
        return f"{stem}.onnx" if self.is_onnx else f"{stem}.py-{re.sub(r'[^A-Za-z0-9_]+', '_', self.factory)}"

    def fingerprint(self) -> dict[str, Any]:
        """The part of every stage key that identifies the model: the spec, and a file's content hash."""
        fp: dict[str, Any] = {"model": self.text}
        if self.is_file:
            fp["model_sha256"] = file_fingerprint(self.path)
        if self.is_onnx:
            # ONNX models are fed the images as stored (no dataset normalisation, StageContext.data).
            fp["inputs"] = "unnormalised"
        return fp

    def check_exists(self) -> None:
        """Raise InputError when a file spec names a file that does not exist."""
        if self.is_file:
            check_input_file(self.path, "model file", "pass an existing .py (path.py:factory) or .onnx file")


@dataclass(frozen=True)
class DataSpec:
    """A parsed ``--data``: a registered dataset ``name`` and, for file datasets, its ``path``."""

    text: str
    name: str
    path: str = ""

    @classmethod
    def parse(cls, text: str) -> "DataSpec":
        """Parse ``name`` or ``name:PATH`` (the name is checked against the registry by the data loader)."""
        if not isinstance(text, str) or not text:
            raise ConfigError(f"dataset spec {text!r} is empty; use a registered dataset (see `list datasets`)")
        name, _, path = text.partition(":")
        return cls(text, name, path)

    def fingerprint(self) -> dict[str, Any]:
        """The part of every stage key that identifies the data: the spec, and the files' fingerprint."""
        fp: dict[str, Any] = {"data": self.text}
        if self.path:
            fp["data_sha256"] = file_fingerprint(self.path)
        return fp
