"""lowrank-deploy as a Python library, for notebooks and scripts.

    import lowrank_deploy as ld

    result = ld.deploy("resnet20", "digits", {"finetune": {"epochs": 2}}, artifacts="artifacts")
    print(result.headline)            # "# 9.1x smaller, ..." from report.md
    result.deploy_dir                 # the folder an app team takes
    result.stage("quantize").metrics  # any stage's measured figures

The same pipeline as ``lowrank-deploy run``: the same config keys (a mapping, a YAML/TOML path, or ``--set``-style
overrides), the same cache under ``artifacts/<model>/``. Errors are :class:`PipelineError` subclasses with a message
naming the problem and the fix. The folders ``pipeline/``, ``exporters/`` and ``benchmarks/`` hold the
implementation; this package is the stable surface.
"""
from __future__ import annotations

from lowrank_deploy.api import DeployResult, StageResult, config, deploy, describe, unpack
from pipeline import __version__
from pipeline.errors import ConfigError, InputError, PipelineError, ValidationError

__all__ = ["ConfigError", "DeployResult", "InputError", "PipelineError", "StageResult", "ValidationError",
           "__version__", "config", "deploy", "describe", "unpack"]
