"""The functions behind ``import lowrank_deploy``: typed wrappers of the runner, the config and the container."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline.catalog import describe as _describe
from pipeline.config import PipelineConfig, build_config, to_dict
from pipeline.errors import ConfigError

__all__ = ["DeployResult", "StageResult", "config", "deploy", "describe", "unpack"]


@dataclass(frozen=True)
class StageResult:
    """One stage of a run: ``status`` is ``ran`` or ``cached``; ``dir`` is its artifact folder."""

    name: str
    status: str
    seconds: float
    dir: Path
    metrics: dict[str, Any]


@dataclass(frozen=True)
class DeployResult:
    """What :func:`deploy` returns: the deliverables folder, every stage's record and the report."""

    root: Path
    deploy_dir: Path | None
    stages: list[StageResult]
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def headline(self) -> str:
        """The first line of ``report.md`` (empty when the run stopped before the benchmark stage)."""
        md = self.deploy_dir / "report.md" if self.deploy_dir else None
        if md is None or not md.is_file():
            return ""
        return md.read_text(encoding="utf-8").splitlines()[0]

    def stage(self, name: str) -> StageResult:
        """The record of stage ``name`` (ConfigError naming the stages of this run if it did not run)."""
        for s in self.stages:
            if s.name == name:
                return s
        raise ConfigError(f"stage {name!r} is not part of this run; it ran: {', '.join(s.name for s in self.stages)}")

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary (what ``lowrank-deploy run --json`` prints)."""
        return {
            "root": str(self.root),
            "deploy_dir": str(self.deploy_dir) if self.deploy_dir else None,
            "headline": self.headline,
            "stages": [{"name": s.name, "status": s.status, "seconds": round(s.seconds, 3), "dir": str(s.dir),
                        "metrics": s.metrics} for s in self.stages],
        }


def _overrides(settings: Mapping[str, Any] | None, prefix: str = "") -> list[str]:
    """``{"finetune": {"epochs": 2}}`` -> ``["finetune.epochs=2"]`` (values as JSON, which the parser reads)."""
    out: list[str] = []
    for key, value in (settings or {}).items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.extend(_overrides(value, dotted + "."))
        else:
            out.append(f"{dotted}={json.dumps(value)}")
    return out


def config(model: str | None = None, data: str | None = None, settings: Mapping[str, Any] | str | Path | None = None,
           overrides: Sequence[str] = (), **top: Any) -> PipelineConfig:
    """The effective, validated config: defaults < file < ``settings`` < ``overrides`` (``section.key=value``).

    Args:
        model: zoo name, ``path/file.py:factory`` or ``model.onnx``.
        data: dataset spec (``digits``, ``shapes``, ``npz:PATH``, ...).
        settings: a mapping of sections (as in a config file), or the path of a YAML/TOML file.
        overrides: ``--set``-style strings, applied last.
        **top: other top-level fields (``weights``, ``seed``, ``device``, ``artifacts``).
    """
    file = settings if isinstance(settings, (str, Path)) else None
    mapping = None if file is not None else settings
    return build_config(file, _overrides(mapping) + list(overrides), model=model, data=data, **top)


def deploy(model: str, data: str = "digits", settings: Mapping[str, Any] | str | Path | None = None, *,
           overrides: Sequence[str] = (), only: str | None = None, from_stage: str | None = None,
           upto: str | None = None, force: bool = False, progress: bool = False, **top: Any) -> DeployResult:
    """Run the pipeline (cached stages reused) and return its typed result.

    Args:
        model, data, settings, overrides, **top: as for :func:`config`.
        only, from_stage, upto, force: stage selection, as the CLI's ``--only/--from/--upto/--force``.
        progress: show progress bars.
    """
    from pipeline.runner import run  # torch and onnxruntime load here, not at `import lowrank_deploy`

    cfg = config(model, data, settings, overrides, **top)
    res = run(cfg, only=only, from_stage=from_stage, force=force, progress=progress, upto=upto)
    stages = [StageResult(r.artifact.stage, r.status, float(r.seconds), r.artifact.dir, dict(r.artifact.metrics))
              for r in res.records]
    report: dict[str, Any] = {}
    if res.deploy_dir is not None and (res.deploy_dir / "report.json").is_file():
        report = json.loads((res.deploy_dir / "report.json").read_text(encoding="utf-8"))
    return DeployResult(res.root, res.deploy_dir, stages, report)


def unpack(container: str | Path, output: str | Path) -> Path:
    """Rebuild the runnable int8 ONNX model from a ``weights.lrdc`` container (bit-exact)."""
    from pipeline.entropy.container import unpack_to_onnx

    return Path(unpack_to_onnx(container, output))


def describe(what: str) -> list[tuple[str, str]]:
    """Every accepted value of ``what`` (stages, formats, models, datasets, targets, selectors, coders, methods)
    with a one-line description."""
    return _describe(what)


def config_dict(cfg: PipelineConfig) -> dict[str, Any]:
    """A config as a plain nested dict (JSON/YAML-ready)."""
    return to_dict(cfg)
