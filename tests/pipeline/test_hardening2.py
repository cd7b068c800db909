"""Hardening round 2: bad inputs refused before any work, with a message naming the problem and the fix."""
from __future__ import annotations

import pytest

from pipeline.config import build_config
from pipeline.errors import ConfigError, InputError


@pytest.mark.parametrize("suffix", [".yaml", ".toml"])
def test_config_file_that_is_not_utf8_is_refused_with_the_fix(tmp_path, suffix):
    p = tmp_path / f"cfg{suffix}"
    p.write_bytes("model = 'caf\xe9'\n".encode("latin-1") if suffix == ".toml" else "model: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"not UTF-8.*save it as UTF-8") as e:
        build_config(p)
    assert str(p) in str(e.value)
    assert e.value.exit_code == 2


def test_directory_passed_as_config_file_is_named_a_directory(tmp_path):
    d = tmp_path / "configs.yaml"
    d.mkdir()
    with pytest.raises(InputError, match="is a directory, not a file") as e:
        build_config(d)
    assert "does not exist" not in str(e.value)


def test_opset_below_13_is_refused_before_any_work_when_quantize_will_run(tmp_path):
    from pipeline.runner import run

    cfg = build_config(None, ["export.opset=11"], model="tiny", data="shapes", artifacts=str(tmp_path / "art"))
    with pytest.raises(ConfigError, match=r"opset >= 13: use export.opset 13-18, or stop before quantize with "
                                          r"--upto export"):
        run(cfg, progress=False)
    assert not (tmp_path / "art").exists()  # refused before the artifacts folder was made


def test_opset_below_13_is_fine_when_the_run_stops_before_quantize():
    from pipeline.runner import _check_stage_plan, stage_names

    cfg = build_config(None, ["export.opset=12"])
    names = stage_names()
    _check_stage_plan(cfg, names, None, "export")  # no quantize: nothing to refuse
    _check_stage_plan(cfg, names, "export", None)
    with pytest.raises(ConfigError, match="export.opset"):
        _check_stage_plan(cfg, names, "quantize", None)
    _check_stage_plan(build_config(None, ["export.opset=13"]), names, None, None)


@pytest.mark.parametrize("energy", ["1e-9", "0", "0.005"])
def test_factorize_energy_below_one_percent_is_refused_with_the_useful_range(energy):
    with pytest.raises(ConfigError, match=r"factorize.energy.*\[0.01, 1\].*useful range"):
        build_config(None, [f"factorize.energy={energy}"])
    assert build_config(None, ["factorize.energy=0.01"]).factorize.energy == 0.01


@pytest.mark.parametrize("bits", ['"08"', "'08'", '"8 "'])
def test_weight_bits_string_08_is_refused(bits):
    with pytest.raises(ConfigError, match="quantize.weight_bits"):
        build_config(None, [f"quantize.weight_bits={bits}"])


def test_user_code_error_names_the_stage_the_function_and_the_original_error(tmp_path):
    from pipeline.errors import UserCodeError
    from pipeline.runner import run

    f = tmp_path / "x.py"
    f.write_text("def make(num_classes):\n    raise KeyError('boom')\n")
    cfg = build_config(None, ["dataset.train_size=16", "dataset.val_size=8", "dataset.test_size=8"],
                       model=f"{f}:make", data="shapes", artifacts=str(tmp_path / "art"))
    with pytest.raises(UserCodeError) as e:
        run(cfg, progress=False, upto="baseline")
    assert str(e.value).startswith(f"stage baseline: user factory make() in {str(f)!r} failed: KeyError: 'boom'")
    assert e.value.exit_code == 2
    logs = list((tmp_path / "art").glob("*/run.log"))
    assert logs and "stage baseline: user factory make()" in logs[0].read_text()


def test_onnx_graph_path_logs_why_and_that_finetuning_is_skipped(tmp_path):
    import warnings

    import torch
    from torch import nn

    from pipeline.runner import run

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 10)).eval()
    path = tmp_path / "elu.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(1, 3, 16, 16),), str(path), dynamo=False, opset_version=17,
                          dynamic_axes={"input": {0: "n"}}, input_names=["input"])
    cfg = build_config(None, ["dataset.train_size=20", "dataset.val_size=10", "dataset.test_size=10"],
                       model=str(path), data="shapes", artifacts=str(tmp_path / "art"))
    run(cfg, progress=False, upto="baseline")
    text = next((tmp_path / "art").glob("*/run.log")).read_text()
    lines = [ln for ln in text.splitlines() if "ONNX graph as is" in ln]
    assert len(lines) == 1
    assert "Elu" in lines[0] and "finetuning will be skipped" in lines[0]


def test_baseline_history_is_saved_and_reproducible(tmp_path):
    import json

    from pipeline.runner import run

    sets = ["baseline.epochs=2", "dataset.train_size=40", "dataset.val_size=10", "dataset.test_size=10"]
    hists = []
    for name in ("a", "b"):
        cfg = build_config(None, sets, model="tiny", data="shapes", artifacts=str(tmp_path / name))
        art = run(cfg, progress=False, upto="baseline").artifact("baseline")
        assert "history.json" in art.files
        hists.append((art.dir / "history.json").read_bytes())
    assert hists[0] == hists[1]  # no wall-clock times: two runs write the same bytes
    h = json.loads(hists[0])
    assert [e["epoch"] for e in h["epochs"]] == [1, 2]
    assert {"loss", "train_acc", "val_acc", "lr"} <= set(h["epochs"][0]) and "seconds" not in h


def test_benchmark_batch_that_cannot_be_allocated_is_refused_before_allocating(tmp_path):
    from benchmarks.latency import available_memory_bytes, check_batch_fits, measure_latency
    from benchmarks.targets import TARGETS
    from pipeline.runner import run
    from tests.quantize.tiny_models import export, tiny_net

    avail = available_memory_bytes()
    assert avail is not None and avail > 0
    check_batch_fits(1, (3, 32, 32))
    with pytest.raises(ConfigError, match=r"benchmark.batch.*more than 1/8 of the \d+ MiB available; set "
                                          r"benchmark.batch to at most 2 "):
        check_batch_fits(3, (1, 4, 4), available=8 * 2 * 64)  # 2 images of 64 bytes fit in 1/8
    # the timing refuses before it allocates: a batch of 1e12 images would be terabytes
    model = export(tiny_net(0), tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match="benchmark.batch"):
        measure_latency({"m": model}, TARGETS.get("cpu"), (3, 16, 16), batch=10**12, samples=1, warmup=0)
    assert measure_latency({"m": model}, TARGETS.get("cpu"), (3, 16, 16), batch=2, samples=1, warmup=0)["m"]["p50"] > 0
    # and a run whose batch cannot fit even at the smallest input is refused before any work
    cfg = build_config(None, [f"benchmark.batch={10**13}"], model="tiny", data="shapes",
                       artifacts=str(tmp_path / "art"))
    with pytest.raises(ConfigError, match="benchmark.batch"):
        run(cfg, progress=False)
    assert not (tmp_path / "art").exists()


def test_user_code_timeout_is_a_config_key_outside_every_stage_key(tmp_path):
    from pipeline.errors import UserCodeError
    from pipeline.runner import input_fingerprint, run, stage_key
    from pipeline.stage_api import STAGES

    f = tmp_path / "slow.py"
    f.write_text("import time\nwhile True:\n    time.sleep(0.01)\n")
    sets = ["dataset.train_size=16", "dataset.val_size=8", "dataset.test_size=8"]
    cfg = build_config(None, sets + ["user_code_timeout_s=0.5"], model=f"{f}:make", data="shapes",
                       artifacts=str(tmp_path / "art"))
    with pytest.raises(UserCodeError, match=r"stage baseline: user model file .*slow.py.*import did not finish "
                                            r"within 0.5 s.*user_code_timeout_s") as e:
        run(cfg, progress=False, upto="baseline")
    assert e.value.exit_code == 2
    # how long user code may take is not what a stage computes: no stage key changes with it
    other = build_config(None, sets + ["user_code_timeout_s=0"], model=f"{f}:make", data="shapes",
                         artifacts=str(tmp_path / "art"))
    fp = input_fingerprint(cfg)
    for name in STAGES.names():
        spec = STAGES.get(name)
        assert stage_key(spec, cfg, fp, None) == stage_key(spec, other, fp, None)
    with pytest.raises(ConfigError, match="user_code_timeout_s"):
        build_config(None, ["user_code_timeout_s=-1"])


_USER_NETS = '''
import torch
from torch import nn


class Down(nn.Module):
    """Unpadded 3x3 convs with 2x2 pools between: 16x16 inputs shrink to 2x2 before the last 3x3 conv."""
    def __init__(self, num_classes):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3),
                                  nn.MaxPool2d(2), nn.Conv2d(8, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, num_classes)
    def forward(self, x):
        return self.fc(self.body(x))


class Svd(nn.Module):
    """Singular values of the feature map as features: torch.linalg has no ONNX form."""
    def __init__(self, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, num_classes)
    def forward(self, x):
        return self.fc(torch.linalg.svdvals(self.conv(x).flatten(2)))


def down(num_classes):
    return Down(num_classes)


def svd(num_classes):
    return Svd(num_classes)
'''


def _user_run(tmp_path, fn, *sets):
    from pipeline.runner import run

    f = tmp_path / "nets.py"
    f.write_text(_USER_NETS)
    cfg = build_config(None, ["dataset.train_size=16", "dataset.val_size=8", "dataset.test_size=8", *sets],
                       model=f"{f}:{fn}", data="shapes", artifacts=str(tmp_path / "art"))
    return run(cfg, progress=False, upto="baseline")


def test_inputs_smaller_than_the_downsampling_are_refused_at_baseline_naming_the_size_key(tmp_path):
    with pytest.raises(InputError, match=r"stage baseline: .*cannot process 16x16 inputs.*smaller than the network's "
                                         r"downsampling: set the config key dataset.input_size to a larger"):
        _user_run(tmp_path, "down", "dataset.input_size=[16, 16]")
    assert _user_run(tmp_path, "down", "dataset.input_size=[32, 32]").artifact("baseline").files


def test_zero_size_map_is_caught_even_when_the_forward_runs():
    import warnings

    from torch import nn

    from pipeline.models.sanity import check_min_input

    class Crop(nn.Module):
        def forward(self, x):
            return x[..., 2:-2, 2:-2]

    # the crop leaves a 0x0 map and nothing after it raises (an empty Linear gives its bias): the hook names it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Initializing zero-element tensors is a no-op"
        net = nn.Sequential(Crop(), nn.Flatten(), nn.Linear(0, 2))
    with pytest.raises(InputError, match=r"cannot process 4x4 inputs.*layer '0' outputs shape \(1, 1, 0, 0\)"
                                         r".*dataset.input_size"):
        check_min_input(net, 1, (4, 4))
    check_min_input(nn.Sequential(Crop(), nn.Flatten(), nn.Linear(2, 2)), 1, (5, 6))


def test_forward_with_an_op_onnx_cannot_export_is_refused_at_baseline(tmp_path):
    from pipeline.errors import UserCodeError

    with pytest.raises(UserCodeError, match=r"stage baseline: model .*nets.py:svd.* cannot be exported to ONNX "
                                            r"\(opset 17\).*svd.*replace that operator"):
        _user_run(tmp_path, "svd")
    assert not list((tmp_path / "art").glob("*/*.tmp-*"))  # no half-written stage folder left behind


def test_fewer_samples_than_the_splits_need_is_refused(tmp_path):
    import numpy as np

    from pipeline.data.npz import load_npz

    p = tmp_path / "three.npz"
    np.savez(p, x=np.random.default_rng(0).integers(0, 256, (3, 8, 8), dtype=np.uint8), y=np.array([0, 1, 0]))
    with pytest.raises(InputError, match=r"class\(es\) .* are in the val/test splits but not among the 1 training "
                                         r"images \(3 samples in all, too few for the splits\); add samples"):
        load_npz(str(p), 0, None)
    ok = tmp_path / "ok.npz"
    np.savez(ok, x=np.random.default_rng(0).integers(0, 256, (30, 8, 8), dtype=np.uint8), y=np.arange(30) % 2)
    assert load_npz(str(ok), 0, None).num_classes == 2


def test_directories_passed_as_files_are_named_directories(tmp_path):
    from pipeline.runner import input_fingerprint
    from pipeline.spec import ModelSpec

    d = tmp_path / "weights.safetensors"
    d.mkdir()
    cfg = build_config(None, [], model="tiny", data="shapes", weights=str(d))
    with pytest.raises(InputError, match=r"weights file .* is a directory, not a file; pass an existing"):
        input_fingerprint(cfg)
    m = tmp_path / "net.py"
    m.mkdir()
    with pytest.raises(InputError, match=r"model file .*net.py' is a directory, not a file"):
        ModelSpec.parse(f"{m}:make").check_exists()
    o = tmp_path / "model.onnx"
    o.mkdir()
    with pytest.raises(InputError, match=r"is a directory, not a file"):
        ModelSpec.parse(str(o)).check_exists()
