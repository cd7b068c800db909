"""The Python API (`import lowrank_deploy`) and the CLI's everyday commands: --version, config, list, run --json."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

import lowrank_deploy as ld
from pipeline.cli import main
from tests.pipeline.conftest import FAST


def test_api_deploy_returns_typed_result_and_reuses_the_cache(tmp_path):
    settings = {"baseline": {"epochs": 1, "batch_size": 16}, "finetune": {"epochs": 1}}
    over = [o for o in FAST if not o.startswith(("baseline.epochs", "finetune.epochs"))]
    res = ld.deploy("tiny", "digits", settings, overrides=over, artifacts=str(tmp_path), upto="quantize")
    assert [s.name for s in res.stages] == ["baseline", "factorize", "finetune", "export", "quantize"]
    assert all(s.status == "ran" for s in res.stages)
    assert res.stage("baseline").metrics["source"] == "trained"
    assert 0.0 <= res.stage("quantize").metrics["test_accuracy"] <= 1.0
    with pytest.raises(ld.ConfigError, match="not part of this run"):
        res.stage("benchmark")
    again = ld.deploy("tiny", "digits", settings, overrides=over, artifacts=str(tmp_path), upto="quantize")
    assert all(s.status == "cached" for s in again.stages)
    assert json.loads(json.dumps(again.to_json()))["stages"][0]["name"] == "baseline"


def test_api_config_merges_mapping_and_overrides():
    cfg = ld.config("resnet20", "shapes", {"finetune": {"epochs": 3, "lr": 1e-3}}, ["finetune.epochs=5"])
    assert cfg.model == "resnet20" and cfg.finetune.epochs == 5 and cfg.finetune.lr == pytest.approx(1e-3)
    with pytest.raises(ld.ConfigError):
        ld.config("tiny", "digits", {"finetune": {"no_such_key": 1}})


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"lowrank-deploy {ld.__version__}"


def test_config_command_prints_the_effective_config(capsys):
    assert main(["config", "--model", "resnet20", "--set", "factorize.energy=0.5", "--seed", "7"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"] == "resnet20" and cfg["seed"] == 7 and cfg["factorize"]["energy"] == 0.5
    assert cfg["finetune"]["method"] == "kd"  # defaults are printed too


@pytest.mark.parametrize("what", ["formats", "coders", "selectors", "targets", "models", "methods", "stages"])
def test_list_describes_every_value(capsys, what):
    assert main(["list", what]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [ln.split()[0] for ln in lines]
    assert all(len(ln.split(maxsplit=1)) == 2 for ln in lines)  # every value has a description
    if what in ("formats", "coders"):
        assert "auto" in names
    assert main(["list", what, "--names"]) == 0
    assert capsys.readouterr().out.split() == names


def test_run_json_is_machine_readable(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--model", "tiny", "--data", "digits",
                          "--artifacts", str(tmp_path), "--upto", "factorize", "--json", "--no-progress",
                          *[a for o in FAST for a in ("--set", o)]], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert [s["name"] for s in summary["stages"]] == ["baseline", "factorize"]
    assert summary["stages"][1]["metrics"]["layers_factorized"] >= 1
