"""What a stage is: a registered function ``fn(ctx) -> StageOutput`` plus the records the runner keeps about it.

Kept apart from ``stages.py`` so the runner, the CLI's ``list`` and the tests can import it without torch-heavy code.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipeline.config import PipelineConfig
from pipeline.registry import Registry


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


@dataclass
class StageContext:
    """Everything a stage may read: the config, earlier artifacts, its own output folder, shared caches."""

    cfg: PipelineConfig
    out_dir: Path
    inputs: dict[str, Artifact]
    log: logging.Logger
    progress: bool = True
    cache: dict[str, Any] = field(default_factory=dict)

    def data(self):  # -> DatasetSplits
        """The run's dataset, loaded once per run and shared between stages.

        Two adjustments are made here, once, so that no loader needs to know about them:

        * with an ONNX model (``--model model.onnx``) the images reach the model as the user stored them - no
          dataset mean/std normalisation (uint8 images are still scaled to [0, 1] by the loaders), because a
          pretrained model expects its own preprocessing; the data then record mean 0 / std 1;
        * an unlabelled dataset gets the pseudo-labels the baseline stage wrote (the original model's top-1), also
          when the baseline is cached from an earlier run. The baseline stage itself puts them into this cache.
        """
        if "data" not in self.cache:
            from pipeline.data import load_dataset

            data = load_dataset(self.cfg.data, seed=self.cfg.seed)
            if self.cfg.model.endswith(".onnx"):
                from pipeline.data.core import unnormalised

                data = unnormalised(data)
            base = self.inputs.get("baseline")
            if data.train.y is None and base is not None:
                import json

                from pipeline.pseudo_labels import apply_labels, load_labels

                labels = load_labels(base.dir)
                if labels is not None:
                    num_classes = int(json.loads((base.dir / "model.json").read_text())["num_classes"])
                    data = apply_labels(data, labels, num_classes)
            self.cache["data"] = data
        return self.cache["data"]


@dataclass(frozen=True)
class StageSpec:
    """A registered stage: its function, the config section it reads, and a version bumped when its output changes."""

    name: str
    fn: Callable[[StageContext], StageOutput]
    section: str
    version: int
    deliverables: dict[str, str]  # file in the stage folder -> name in deploy/


STAGES: Registry[StageSpec] = Registry("stage")


def stage(name: str, section: str, version: int = 1, deliverables: dict[str, str] | None = None):
    """Decorator registering a stage function under ``name`` (order of registration = run order)."""

    def deco(fn: Callable[[StageContext], StageOutput]) -> Callable[[StageContext], StageOutput]:
        STAGES.add(name, StageSpec(name, fn, section, version, dict(deliverables or {})))
        return fn

    return deco
