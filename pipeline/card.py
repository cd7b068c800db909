"""The model card: what the pipeline knows about the model it carries from stage to stage, typed and validated.

One :class:`ModelCard` is made by the baseline stage and handed on (each stage may replace its ``structure``);
``model.json`` in every checkpoint folder is its serialisation (with a ``version`` field), and device-ready metadata
is written from it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import InputError
from pipeline.spec import ModelSpec

CARD_VERSION = 1
#: ``form`` of a model kept as an ONNX graph (the importer's fallback), else ``"torch"``
TORCH_FORM, GRAPH_FORM = "torch", "onnx_graph"
#: ``classify`` for a single-logits model; the other head kinds of ``pipeline.heads.kinds``; ``multi`` for several
TASKS = ("classify", "dense", "sequence", "embedding", "multi")
#: ``logits``: one classifier output; ``heads``: the outputs ``heads`` describes
OUTPUTS = ("logits", "heads")


@dataclass(frozen=True)
class ModelCard:
    """The model's identity, geometry, preprocessing and structure.

    Attributes:
        spec: the model spec string as given (zoo name, ``file.py:factory`` or ``.onnx``).
        num_classes: classifier outputs.
        in_channels: input channels (C).
        input_size: input width W (the square side when ``input_hw`` is None).
        input_hw: ``(H, W)`` of the input (None: square, ``input_size`` on each side).
        mean, std: per-channel input normalisation the deployed model expects (0/1 for an ONNX model's raw inputs).
        class_names: class labels when the dataset names them.
        task: what the model does (``"classify"``).
        output: what its output is (``"logits"``).
        heads: one ``pipeline.heads.HeadSpec.as_dict()`` per model output (empty: one classifier output).
        structure: the factorization structure (layer name -> form and ranks; empty for a dense model).
        form: ``"torch"`` or ``"onnx_graph"`` (how the checkpoint stores it).
    """

    spec: str
    num_classes: int
    in_channels: int
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] | None = None
    input_hw: tuple[int, int] | None = None
    heads: tuple[dict[str, Any], ...] = ()
    task: str = "classify"
    output: str = "logits"
    structure: dict[str, Any] = field(default_factory=dict)
    form: str = TORCH_FORM

    def __post_init__(self) -> None:
        ModelSpec.parse(self.spec)  # a malformed spec is an error here, not three stages later
        problems = []
        if int(self.num_classes) < 1:
            problems.append(f"num_classes={self.num_classes} (must be >= 1)")
        if int(self.in_channels) < 1 or int(self.input_size) < 1 or min(self.input_shape) < 1:
            problems.append(f"input shape {self.input_shape} (must be positive)")
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            problems.append(f"mean/std of {len(self.mean)}/{len(self.std)} values for {self.in_channels} channels")
        if any(float(s) <= 0 for s in self.std):
            problems.append(f"std {list(self.std)} (must be > 0)")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            problems.append(f"{len(self.class_names)} class names for {self.num_classes} classes")
        if self.task not in TASKS or self.output not in OUTPUTS:
            problems.append(f"task/output {self.task!r}/{self.output!r} (known: {TASKS}/{OUTPUTS})")
        if self.form not in (TORCH_FORM, GRAPH_FORM):
            problems.append(f"form {self.form!r}")
        if problems:
            raise InputError(f"model card of {self.spec!r} is invalid: {'; '.join(problems)}; rerun the baseline "
                             f"stage (--force) to rebuild it")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one input image."""
        if self.input_hw is not None:
            return (int(self.in_channels), int(self.input_hw[0]), int(self.input_hw[1]))
        return (int(self.in_channels), int(self.input_size), int(self.input_size))

    def with_structure(self, structure: dict[str, Any]) -> "ModelCard":
        """This card with another factorization structure."""
        return dataclasses.replace(self, structure=dict(structure))

    def with_form(self, form: str) -> "ModelCard":
        """This card with another storage form."""
        return dataclasses.replace(self, form=form)

    def to_json(self) -> dict[str, Any]:
        """The ``model.json`` record."""
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["class_names"] = None if self.class_names is None else list(self.class_names)
        d["input_hw"] = None if self.input_hw is None else [int(v) for v in self.input_hw]
        d["heads"] = [dict(h) for h in self.heads]
        return {"version": CARD_VERSION, **d}

    @classmethod
    def from_json(cls, record: dict[str, Any], where: str = "model.json") -> "ModelCard":
        """Validate and read a ``model.json`` record (InputError naming the problem and the fix)."""
        if not isinstance(record, dict):
            raise InputError(f"{where} is not a JSON object; rerun the stage that wrote it (--force)")
        if record.get("version") != CARD_VERSION:
            raise InputError(f"{where} has card version {record.get('version')!r}, this pipeline reads version "
                             f"{CARD_VERSION}; rerun the stage that wrote it (--force)")
        known = {f.name for f in dataclasses.fields(cls)}
        missing = sorted({"spec", "num_classes", "in_channels", "input_size", "mean", "std"} - set(record))
        unknown = sorted(set(record) - known - {"version"})
        if missing or unknown:
            raise InputError(f"{where}: missing fields {missing}, unknown fields {unknown}; rerun the stage that "
                             f"wrote it (--force)")
        names = record.get("class_names")
        return cls(**{
            **{k: v for k, v in record.items() if k in known},
            "mean": tuple(float(v) for v in record["mean"]),
            "std": tuple(float(v) for v in record["std"]),
            "class_names": None if names is None else tuple(str(n) for n in names),
            "structure": dict(record.get("structure") or {}),
            "input_hw": None if record.get("input_hw") is None else tuple(int(v) for v in record["input_hw"]),
            "heads": tuple(dict(h) for h in record.get("heads") or ()),
        })
