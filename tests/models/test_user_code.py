"""User code at the boundary: failures, sys.exit, bad factories, bad forwards, timeouts, non-exportable ops."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.errors import InputError, PipelineError, UserCodeError
from pipeline.models import build_model, load_weights
from pipeline.models.sanity import check_checkpoint_sanity
from pipeline.models.user_code import check_exportable, run_guarded

HEADER = "import sys, time\nimport torch\nfrom torch import nn\n"
GOOD = '''
class Net(nn.Module):
    def __init__(self, num_classes=3, in_channels=1, tup=False, fail=False, hang=False):
        super().__init__()
        self.fc = nn.Linear(in_channels * 8 * 8, num_classes)
        self.tup, self.fail, self.hang = tup, fail, hang
    def forward(self, x):
        if self.fail:
            raise ValueError("shape oops")
        if self.hang:
            while True:
                time.sleep(0.01)
        y = self.fc(x.flatten(1))
        return (y, y) if self.tup else y
'''


def _file(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "user_model.py"
    p.write_text(HEADER + GOOD + body)
    return p


def _build(p: Path, fn: str) -> nn.Module:
    return build_model(f"{p}:{fn}", num_classes=3, in_channels=1, input_size=8)


def test_error_class_and_exit_code() -> None:
    assert issubclass(UserCodeError, PipelineError) and UserCodeError.exit_code == 2


def test_good_factory(tmp_path: Path) -> None:
    m = _build(_file(tmp_path, "def make(num_classes, in_channels):\n    return Net(num_classes, in_channels)\n"), "make")
    assert m.training and m(torch.zeros(2, 1, 8, 8)).shape == (2, 3)


@pytest.mark.parametrize("body, match", [
    ("def make(num_classes):\n    raise KeyError('boom')\n", r"user factory make\(\) in .*user_model.py. failed: KeyError: 'boom'; fix"),
    ("def make(num_classes):\n    sys.exit(3)\n", r"called sys.exit\(3\) during factory call; user code must return"),
    ("def make():\n    return Net(5)\n", r"returned shape \(1, 5\), expected \(1, 3\); the factory ignores num_classes=3"),
    ("def make():\n    return nn.ReLU()\n", r"no parameters; there is nothing to factorize"),
    ("def make(num_classes):\n    return Net(num_classes), 1\n", r"returned a tuple of 2 items, not a torch.nn.Module"),
    ("def make(num_classes):\n    return 42\n", r"returned int, not a torch.nn.Module"),
    ("def make(num_classes):\n    return Net(num_classes, fail=True)\n", r"user forward of make\(\) in .* failed at the first forward: ValueError: shape oops"),
    ("def make(num_classes):\n    return Net(num_classes, tup=True)\n", r"forward .* returned a tuple of 2 items; it must return one logits"),
])
def test_bad_factories(tmp_path: Path, body: str, match: str) -> None:
    with pytest.raises(UserCodeError, match=match):
        _build(_file(tmp_path, body), "make")


def test_import_failure_and_exit(tmp_path: Path) -> None:
    p = tmp_path / "m1.py"
    p.write_text("import sys\nsys.exit(7)\n")
    with pytest.raises(UserCodeError, match=r"called sys.exit\(7\) during import") as ei:
        build_model(f"{p}:make", 3, 1, 8)
    assert ei.value.exit_code == 2
    p2 = tmp_path / "m2.py"
    p2.write_text("x = 1 / 0\n")
    with pytest.raises(InputError, match=r"failed to import: ZeroDivisionError: division by zero"):
        build_model(f"{p2}:make", 3, 1, 8)


def test_timeouts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserCodeError, match=r"factory call did not finish within 0.2 s.*timeout_s"):
        run_guarded(lambda: [None for _ in iter(int, 1)], "factory 'x'", "factory call", timeout_s=0.2)
    # A forward that loops forever, inside the guarded first forward.
    p = _file(tmp_path, "def make(num_classes):\n    return Net(num_classes, hang=True)\n")
    from pipeline.models import user_code
    monkeypatch.setattr(user_code, "DEFAULT_TIMEOUT_S", 0.3)  # the documented knob, not a mock of user code
    with pytest.raises(UserCodeError, match=r"first forward did not finish within 0.3 s"):
        _build(p, "make")


def test_timeout_off_main_thread() -> None:
    box: dict[str, BaseException] = {}

    def worker() -> None:
        try:
            run_guarded(lambda: __import__("time").sleep(5), "factory 'y'", "factory call", timeout_s=0.2)
        except BaseException as e:  # noqa: BLE001
            box["e"] = e
    t = threading.Thread(target=worker)
    t.start()
    t.join(10)
    assert isinstance(box.get("e"), UserCodeError) and "did not finish within 0.2 s" in str(box["e"])


class _Unexportable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.linalg.svd(x).S)  # no ONNX symbolic for linalg_svd


def test_check_exportable() -> None:
    check_exportable(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), torch.zeros(1, 1, 2, 2))
    with pytest.raises(UserCodeError, match=r"cannot be exported to ONNX.*svd.*replace that operator"):
        check_exportable(_Unexportable(), torch.zeros(1, 4, 4))


@pytest.mark.parametrize("key, value, match", [
    ("bn.running_var", -1.0, r"'bn.running_var' \(BatchNorm running variance\) has negative entries.*corrupt"),
    ("fc.weight", 3e38, r"'fc.weight' holds a value of magnitude 3e\+38.*checkpoint is corrupt"),
    ("fc.weight", float("nan"), r"'fc.weight' holds NaN/Inf.*corrupt"),
])
def test_corrupt_checkpoint(tmp_path: Path, key: str, value: float, match: str) -> None:
    model = nn.Sequential()
    model.add_module("fc", nn.Linear(4, 4))
    model.add_module("bn", nn.BatchNorm1d(4))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state[key].view(-1)[0] = value
    with pytest.raises(InputError, match=match):
        check_checkpoint_sanity(state)
    path = tmp_path / "w.pt"
    torch.save(state, path)
    with pytest.raises(InputError, match=match):
        load_weights(model, str(path))
    check_checkpoint_sanity(model.state_dict())  # a fresh model is fine
