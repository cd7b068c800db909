"""Preprocessing and labels that travel with a model: ONNX ``metadata_props`` (``lowrank.*`` keys) and ``model.json``.

An app team gets one ``.onnx``/``.ort`` file and must know how to feed it: the keys below say the layout, size,
colour order, value range and normalisation of the input, and what the outputs mean. ONNX Runtime copies
``metadata_props`` into ORT-format files, so ``InferenceSession(...).get_modelmeta().custom_metadata_map`` reads the
same keys from a ``.ort`` (tests/exporters/test_metadata.py checks it).

Every value is a string (``metadata_props`` are string pairs); lists are JSON. The keys:

``lowrank.mean`` / ``lowrank.std``   per-channel normalisation, JSON lists of floats
``lowrank.input_layout``             ``"NCHW"``
``lowrank.input_size``               JSON ``[C, H, W]`` of one sample
``lowrank.batch``                    ``"dynamic"`` or the fixed batch size (``"1"``)
``lowrank.colour_order``             ``"RGB"`` (3 channels), ``"gray"`` (1 channel) or ``"channels"`` (other)
``lowrank.input_range``              what the app feeds: ``"[0,1] then (x-mean)/std"`` or ``"[0,1] raw"`` (baked)
``lowrank.preprocessing_baked``      ``"true"`` when ``(x-mean)/std`` is inside the graph, else ``"false"``
``lowrank.task``                     e.g. ``"classification"``
``lowrank.num_classes``              number of outputs per sample
``lowrank.class_names``              JSON list of strings (optional)
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline.artifacts import atomic_write_bytes
from pipeline.errors import InputError, ValidationError
from pipeline.ort_session import make_session

PREFIX = "lowrank."
RANGE_NORMALISED = "[0,1] then (x-mean)/std"
RANGE_RAW = "[0,1] raw (normalisation is inside the graph)"


@dataclass(frozen=True)
class DeployMeta:
    """What an app needs to feed a shipped graph and read its outputs (the coordinator maps the ModelCard onto it).

    ``dynamic_batch`` and ``baked`` describe one file (a batch-1 copy or a baked graph gets its own copy via
    :func:`dataclasses.replace`); everything else describes the model.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: tuple[int, int, int]
    num_classes: int
    task: str = "classification"
    class_names: tuple[str, ...] | None = None
    colour_order: str | None = None  # None: RGB for 3 channels, gray for 1, channels otherwise
    dynamic_batch: bool = True
    fixed_batch: int | None = None
    baked: bool = False
    extra: dict[str, str] = field(default_factory=dict)  # further lowrank.* keys, already strings

    def __post_init__(self) -> None:
        c = int(self.input_size[0]) if len(self.input_size) == 3 else -1
        if c < 1 or any(int(v) < 1 for v in self.input_size):
            raise ValidationError(f"metadata: input_size must be (C, H, W) of positive ints, got {self.input_size}")
        if len(self.mean) != c or len(self.std) != c:
            raise ValidationError(f"metadata: mean/std need one value per channel ({c}), got {len(self.mean)} and "
                                  f"{len(self.std)}; pass the dataset's per-channel statistics")
        if any(float(s) == 0.0 for s in self.std):
            raise ValidationError(f"metadata: std has a zero entry {self.std}; a constant channel must get std 1")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValidationError(f"metadata: {len(self.class_names)} class names for {self.num_classes} classes; "
                                  "give one name per output or none")
        if not self.colour_order:  # resolved once, so a metadata round trip gives an equal object
            object.__setattr__(self, "colour_order", {3: "RGB", 1: "gray"}.get(c, "channels"))

    @property
    def colour(self) -> str:
        """Colour order: the given one, else ``RGB`` for 3 channels, ``gray`` for 1, ``channels`` otherwise."""
        return str(self.colour_order)


def meta_from_mapping(d: Mapping[str, Any]) -> DeployMeta:
    """Build a :class:`DeployMeta` from a plain dict (JSON-like lists accepted; unknown keys refused)."""
    known = set(DeployMeta.__dataclass_fields__)
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValidationError(f"metadata: unknown field(s) {unknown}; known: {sorted(known)}")
    kw = dict(d)
    for k in ("mean", "std"):
        if k in kw:
            kw[k] = tuple(float(v) for v in kw[k])
    if "input_size" in kw:
        kw["input_size"] = tuple(int(v) for v in kw["input_size"])
    if kw.get("class_names") is not None:
        kw["class_names"] = tuple(str(v) for v in kw["class_names"])
    return DeployMeta(**kw)


def metadata_props(meta: DeployMeta) -> dict[str, str]:
    """The ``lowrank.*`` string pairs for one graph (sorted keys, deterministic JSON)."""
    props = {
        "mean": json.dumps([float(v) for v in meta.mean]),
        "std": json.dumps([float(v) for v in meta.std]),
        "input_layout": "NCHW",
        "input_size": json.dumps([int(v) for v in meta.input_size]),
        "batch": "dynamic" if meta.dynamic_batch else str(int(meta.fixed_batch or 1)),
        "colour_order": meta.colour,
        "input_range": RANGE_RAW if meta.baked else RANGE_NORMALISED,
        "preprocessing_baked": "true" if meta.baked else "false",
        "task": meta.task,
        "num_classes": str(int(meta.num_classes)),
    }
    if meta.class_names is not None:
        props["class_names"] = json.dumps(list(meta.class_names), ensure_ascii=False)
    props.update(meta.extra)
    return {PREFIX + k: props[k] for k in sorted(props)}


def set_metadata(proto: Any, meta: DeployMeta) -> Any:
    """Replace the ``lowrank.*`` entries of an ONNX ``ModelProto`` in place (other keys kept). Returns ``proto``."""
    keep = [(p.key, p.value) for p in proto.metadata_props if not p.key.startswith(PREFIX)]
    del proto.metadata_props[:]
    for k, v in keep + sorted(metadata_props(meta).items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    return proto


def write_metadata(path: str | Path, meta: DeployMeta) -> Path:
    """Write the ``lowrank.*`` metadata into an ``.onnx`` file (atomically, graph unchanged)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise InputError(f"metadata: {path} does not exist; export the model first")
    proto = onnx.load(str(path))
    set_metadata(proto, meta)
    return atomic_write_bytes(path, proto.SerializeToString())


def read_props(path: str | Path) -> dict[str, str]:
    """All custom metadata of an ``.onnx`` or ``.ort`` file, as ONNX Runtime sees it (the way an app reads it)."""
    sess = make_session(Path(path), threads=1)
    return dict(sess.get_modelmeta().custom_metadata_map)


def read_metadata(path: str | Path) -> DeployMeta:
    """Parse the ``lowrank.*`` metadata of an ``.onnx`` or ``.ort`` file back into a :class:`DeployMeta`.

    Raises:
        InputError: the file has no ``lowrank.*`` metadata or it is malformed.
    """
    return meta_from_props(read_props(path), name=Path(path).name)


def meta_from_props(props: Mapping[str, str], name: str = "model") -> DeployMeta:
    """Inverse of :func:`metadata_props`."""
    p = {k[len(PREFIX):]: v for k, v in props.items() if k.startswith(PREFIX)}
    try:
        batch = p["batch"]
        names = p.get("class_names")
        core = {"mean", "std", "input_layout", "input_size", "batch", "colour_order", "input_range",
                "preprocessing_baked", "task", "num_classes", "class_names"}
        return DeployMeta(
            mean=tuple(float(v) for v in json.loads(p["mean"])),
            std=tuple(float(v) for v in json.loads(p["std"])),
            input_size=tuple(int(v) for v in json.loads(p["input_size"])),  # type: ignore[arg-type]
            num_classes=int(p["num_classes"]),
            task=p["task"],
            class_names=tuple(json.loads(names)) if names is not None else None,
            colour_order=p["colour_order"],
            dynamic_batch=batch == "dynamic",
            fixed_batch=None if batch == "dynamic" else int(batch),
            baked=p["preprocessing_baked"] == "true",
            extra={k: v for k, v in p.items() if k not in core},
        )
    except (KeyError, ValueError, TypeError) as e:
        raise InputError(f"{name}: missing or malformed lowrank.* metadata ({type(e).__name__}: {e}); "
                         "re-export it with exporters.metadata.write_metadata") from None


def model_json(meta: DeployMeta, files: Mapping[str, Mapping[str, Any]] | Sequence[str]) -> dict[str, Any]:
    """Content of ``deploy/model.json``: the same fields as the graph metadata, plus the shipped files.

    Args:
        meta: the model's metadata (the dynamic-batch, not baked description; per-file differences go in ``files``).
        files: shipped file names, or ``{name: {per-file facts, e.g. "batch": 1, "preprocessing_baked": true}}``.
    """
    entries = {n: {} for n in files} if not isinstance(files, Mapping) else {n: dict(v) for n, v in files.items()}
    d = asdict(meta)
    return {
        "format": "lowrank-deploy model card 1",
        "task": meta.task,
        "num_classes": int(meta.num_classes),
        "class_names": list(meta.class_names) if meta.class_names is not None else None,
        "input": {
            "layout": "NCHW",
            "size": [int(v) for v in meta.input_size],
            "batch": "dynamic" if meta.dynamic_batch else int(meta.fixed_batch or 1),
            "colour_order": meta.colour,
            "range": RANGE_RAW if meta.baked else RANGE_NORMALISED,
            "mean": [float(v) for v in meta.mean],
            "std": [float(v) for v in meta.std],
            "preprocessing_baked": bool(meta.baked),
        },
        "metadata_keys": sorted(metadata_props(meta)),
        "extra": d["extra"],
        "files": {n: entries[n] for n in sorted(entries)},
    }


def for_file(meta: DeployMeta, *, baked: bool | None = None, fixed_batch: int | None = None) -> DeployMeta:
    """The metadata of one variant file: a baked graph and/or a fixed-batch copy of the model."""
    out = meta
    if baked is not None:
        out = replace(out, baked=baked)
    if fixed_batch is not None:
        out = replace(out, dynamic_batch=False, fixed_batch=int(fixed_batch))
    return out
