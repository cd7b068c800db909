"""What a stage is: a registered function ``fn(ctx) -> StageOutput``, what it reads, and the records the runner keeps.

A stage declares the config it reads (``reads``: whole sections such as ``"finetune"`` or dotted keys such as
``"factorize.align"``) and the earlier stages whose artifacts it takes (``inputs``). The runner's stage key hashes
exactly those reads and those inputs' output hashes, and the stage only sees the declared inputs in its context, so
a read that is not declared cannot go unnoticed: it is a ``KeyError`` in ``ctx.inputs`` or a missing key entry.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipeline.checkpoint import load_card
from pipeline.config import PipelineConfig, to_dict
from pipeline.data import DatasetSplits, load_dataset
from pipeline.data.core import unnormalised
from pipeline.errors import PipelineError
from pipeline.geometry import resolve_input_size
from pipeline.pseudo_labels import apply_labels, load_labels
from pipeline.registry import Registry
from pipeline.spec import ModelSpec

#: the config section of the dataset load: every stage that calls ``ctx.data()`` declares it among its reads
DATASET = "dataset"

#: top-level config fields that are part of every stage key through the input fingerprint (runner.input_fingerprint)
FINGERPRINTED = ("model", "data", "weights", "seed", "device")


@dataclass
class Artifact:
    """A completed stage's output: its folder, the files it produced, metrics and the content hash of the files."""

    stage: str
    index: int
    key: str
    dir: Path
    files: list[str]
    metrics: dict[str, Any]
    sha256: str

    def path(self, name: str) -> Path:
        """Absolute path of one of this artifact's files."""
        return self.dir / name

    def to_json(self) -> dict[str, Any]:
        """JSON record (the completion marker ``artifact.json`` and the manifest use it)."""
        return {
            "stage": self.stage,
            "index": self.index,
            "key": self.key,
            "files": sorted(self.files),
            "metrics": self.metrics,
            "sha256": self.sha256,
        }


@dataclass
class StageOutput:
    """What a stage function returns: the files it wrote into ``ctx.out_dir`` and its metrics."""

    files: list[str]
    metrics: dict[str, Any] = field(default_factory=dict)


def config_dataset(cfg: PipelineConfig) -> DatasetSplits:
    """The dataset ``cfg`` names, as the run's stages see it (split sizes, input size; an ONNX model gets the images
    as stored, see :meth:`StageContext.data`), without the baseline's pseudo-labels."""
    d = cfg.dataset
    data = load_dataset(cfg.data, seed=cfg.seed, input_size=resolve_input_size(cfg),
                        split_sizes=(d.train_size, d.val_size, d.test_size))
    return unnormalised(data) if ModelSpec.parse(cfg.model).is_onnx else data


@dataclass
class StageContext:
    """Everything a stage may read: the config, its declared earlier artifacts, its output folder, shared caches."""

    cfg: PipelineConfig
    out_dir: Path
    inputs: dict[str, Artifact]
    log: logging.Logger
    progress: bool = True
    cache: dict[str, Any] = field(default_factory=dict)
    reads: tuple[str, ...] = (DATASET,)  # the running stage's declared reads (the runner sets them)

    def data(self) -> DatasetSplits:
        """The run's dataset, loaded once per run and shared between stages.

        Two adjustments are made here, once, so that no loader needs to know about them:

        * with an ONNX model (``--model model.onnx``) the images reach the model as the user stored them - no
          dataset mean/std normalisation (uint8 images are still scaled to [0, 1] by the loaders), because a
          pretrained model expects its own preprocessing; the data then record mean 0 / std 1;
        * an unlabelled dataset gets the pseudo-labels the baseline stage wrote (the original model's top-1), also
          when the baseline is cached from an earlier run. The baseline stage itself puts them into this cache;
          every later stage that loads data therefore declares ``baseline`` among its inputs.
        """
        if DATASET not in self.reads:
            raise PipelineError(f"a stage that loads the dataset must declare reads={DATASET!r} (its key would "
                                f"otherwise miss the dataset settings); add it to the stage's @stage(reads=...)")
        if "data" not in self.cache:
            data = config_dataset(self.cfg)
            base = self.inputs.get("baseline")
            if data.train.y is None and base is not None:
                labels = load_labels(base.dir)
                if labels is not None:
                    data = apply_labels(data, labels, load_card(base.dir).num_classes)
            self.cache["data"] = data
        return self.cache["data"]


@dataclass(frozen=True)
class StageSpec:
    """A registered stage: its function, what it reads, and a version bumped when its output changes.

    ``reads`` are config paths (a section, ``"quantize"``, or a dotted key, ``"export.opset"``); the top-level
    inputs in :data:`FINGERPRINTED` are part of every key and need no declaration. ``inputs`` are the earlier
    stages whose artifacts the stage opens: ``"finetune"`` (every file of it) or ``"export/model.onnx"`` (that one
    file: the key then ignores export's other files, such as the ``.ort`` whose bytes ORT does not reproduce).
    """

    name: str
    fn: Callable[[StageContext], StageOutput]
    reads: tuple[str, ...]
    inputs: tuple[str, ...]
    version: int
    deliverables: dict[str, str]  # file in the stage folder -> name in deploy/
    #: reads that apply only under one setting: ``((path, value, extra_reads), ...)``; e.g. the rank search's
    #: distillation and timing settings, read by factorize only when ``factorize.selector`` is ``"search"`` (an
    #: always-declared read would rerun every factorize on a finetune learning-rate change)
    reads_when: tuple[tuple[str, Any, tuple[str, ...]], ...] = ()

    def reads_for(self, cfg: PipelineConfig) -> tuple[str, ...]:
        """The config paths this stage reads under ``cfg``: ``reads`` plus every ``reads_when`` that holds."""
        extra = [r for path, value, more in self.reads_when if _holds(config_value(cfg, path), value) for r in more]
        return tuple(dict.fromkeys(self.reads + tuple(extra)))


    @property
    def input_stages(self) -> tuple[str, ...]:
        """The stage names of ``inputs`` (without file parts), in declaration order."""
        return tuple(dict.fromkeys(input_stage(e) for e in self.inputs))


STAGES: Registry[StageSpec] = Registry("stage")


@dataclasses.dataclass(frozen=True)
class Not:
    """A ``reads_when`` condition that holds when the config value is anything but ``value``."""

    value: Any


def _holds(actual: Any, condition: Any) -> bool:
    return actual != condition.value if isinstance(condition, Not) else actual == condition


def input_stage(entry: str) -> str:
    """Stage name of an ``inputs`` entry (``"export/model.onnx"`` -> ``"export"``)."""
    return entry.split("/", 1)[0]


def config_value(cfg: PipelineConfig, path: str) -> Any:
    """The JSON-ready value of config path ``path`` (``"finetune"`` or ``"factorize.align"``) in ``cfg``."""
    obj: Any = cfg
    for part in path.split("."):
        obj = getattr(obj, part)
    return to_dict(obj) if dataclasses.is_dataclass(obj) else (list(obj) if isinstance(obj, tuple) else obj)


def read_config(spec: StageSpec, cfg: PipelineConfig) -> dict[str, Any]:
    """``{read: value}`` for every config path ``spec`` declares (what its key hashes and the manifest records)."""
    return {path: config_value(cfg, path) for path in spec.reads_for(cfg)}


def _check_reads(name: str, reads: tuple[str, ...]) -> None:
    """Reject a declared read that names no config field (a typo would silently hash nothing)."""
    defaults = PipelineConfig()
    for path in reads:
        try:
            config_value(defaults, path)
        except AttributeError:
            raise ValueError(f"stage {name!r} declares reads {path!r}, which is not a config section or key") from None
        if path.split(".")[0] in FINGERPRINTED:
            raise ValueError(f"stage {name!r} declares reads {path!r}, which every key already fingerprints")


def stage(name: str, reads: tuple[str, ...], inputs: tuple[str, ...] = (), version: int = 1,
          deliverables: dict[str, str] | None = None,
          reads_when: tuple[tuple[str, Any, tuple[str, ...]], ...] = ()):
    """Decorator registering a stage function under ``name`` (order of registration = run order).

    Args:
        name: stage name (folder ``NN-<name>-<key>``).
        reads: the config sections and dotted keys the stage (and everything it calls) reads.
        inputs: earlier stages whose artifacts it opens (each must be registered already).
        version: bumped when the stage's output changes for the same inputs.
        deliverables: files copied into ``deploy/`` (stage file -> deploy name).
        reads_when: ``(path, value, extra_reads)`` triples: ``extra_reads`` count only when ``path`` is ``value``
            (or, with ``Not(value)``, when it is not).
    """
    _check_reads(name, tuple(reads))
    for path, _value, more in reads_when:
        _check_reads(name, (path, *more))
    unknown = [i for i in inputs if input_stage(i) not in STAGES.names()]
    if unknown:
        raise ValueError(f"stage {name!r} takes inputs {unknown} that are not registered before it")

    def deco(fn: Callable[[StageContext], StageOutput]) -> Callable[[StageContext], StageOutput]:
        STAGES.add(name, StageSpec(name, fn, tuple(reads), tuple(inputs), version, dict(deliverables or {}),
                                    tuple((p, v, tuple(m)) for p, v, m in reads_when)))
        return fn

    return deco
