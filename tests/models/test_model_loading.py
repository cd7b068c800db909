"""User-file factories and checkpoint loading (safetensors, weights-only .pt, malicious pickles, mismatches)."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from pipeline.errors import UserCodeError, InputError
from pipeline.models import build_model, load_weights

USER_FILE = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes=10, in_channels=3):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.conv(x)), 1))


def make(num_classes, in_channels):
    return Net(num_classes, in_channels)


def make_kwargs(**kw):
    return Net(**kw)


def make_fixed():
    return Net(5, 1)


def not_a_model():
    return 42
'''


@pytest.fixture()
def user_file(tmp_path: Path) -> Path:
    p = tmp_path / "my_model.py"
    p.write_text(USER_FILE)
    return p


def test_user_factory_with_args(user_file: Path) -> None:
    m = build_model(f"{user_file}:make", num_classes=4, in_channels=2, input_size=16)
    assert m(torch.randn(2, 2, 16, 16)).shape == (2, 4)
    m = build_model(f"{user_file}:make_kwargs", num_classes=6, in_channels=3, input_size=16)
    assert m(torch.randn(2, 3, 16, 16)).shape == (2, 6)


def test_user_factory_without_args(user_file: Path) -> None:
    m = build_model(f"{user_file}:make_fixed", num_classes=5, in_channels=1, input_size=8)
    assert m(torch.randn(1, 1, 8, 8)).shape == (1, 5)
    # Since issue 17 a factory whose model ignores the dataset's class count is refused at build time.
    with pytest.raises(UserCodeError, match="ignores num_classes=4"):
        build_model(f"{user_file}:make_fixed", num_classes=4, in_channels=1, input_size=8)


def test_user_file_errors(user_file: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        build_model(f"{tmp_path / 'nope.py'}:make", 10, 3, 32)
    with pytest.raises(InputError, match="no callable 'missing'.*make"):
        build_model(f"{user_file}:missing", 10, 3, 32)
    with pytest.raises(InputError, match="not a torch.nn.Module"):
        build_model(f"{user_file}:not_a_model", 10, 3, 32)
    broken = tmp_path / "broken.py"
    broken.write_text("import nonexistent_module_xyz\n")
    with pytest.raises(InputError, match="failed to import"):
        build_model(f"{broken}:make", 10, 3, 32)


def _tiny(seed: int = 0, num_classes: int = 10) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("tiny", num_classes, 3, 32)


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_safetensors_round_trip(tmp_path: Path) -> None:
    src, dst = _tiny(0), _tiny(1)
    assert not _same(src, dst)
    path = tmp_path / "w.safetensors"
    save_file(src.state_dict(), str(path))
    load_weights(dst, str(path))
    assert _same(src, dst)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(src.eval()(x), dst.eval()(x))


@pytest.mark.parametrize("wrap", ["raw", "state_dict", "model", "module_prefix"])
def test_pt_round_trip(tmp_path: Path, wrap: str) -> None:
    src, dst = _tiny(0), _tiny(1)
    sd = src.state_dict()
    obj = {"raw": sd, "state_dict": {"state_dict": sd, "epoch": 3}, "model": {"model": sd},
           "module_prefix": {f"module.{k}": v for k, v in sd.items()}}[wrap]
    path = tmp_path / "w.pt"
    torch.save(obj, path)
    load_weights(dst, str(path))
    assert _same(src, dst)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nope.safetensors"):
        load_weights(_tiny(), str(tmp_path / "nope.safetensors"))


class _Evil:
    """Unpickling this calls open(target, 'w'), i.e. creates a file: a stand-in for arbitrary code execution."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.target), "w"))


def test_the_malicious_payload_is_real(tmp_path: Path) -> None:
    # A plain unpickle of the same payload does create its file, so the refusals below are meaningful.
    proof = tmp_path / "proof.txt"
    pickle.loads(pickle.dumps(_Evil(proof))).close()
    assert proof.exists()


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_malicious_pickle_is_refused(tmp_path: Path, writer: str) -> None:
    target = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pt"
    if writer == "torch":
        torch.save({"weight": _Evil(target)}, path)
    else:
        path.write_bytes(pickle.dumps({"weight": _Evil(target)}))
    with pytest.raises(InputError, match="weights-only.*safetensors"):
        load_weights(_tiny(), str(path))
    assert not target.exists(), "the malicious payload ran"


def test_corrupt_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(InputError, match="safetensors"):
        load_weights(_tiny(), str(path))


def test_mismatch_names_keys(tmp_path: Path) -> None:
    sd = _tiny(0, num_classes=10).state_dict()
    sd.pop("features.0.0.weight")
    sd["extra.weight"] = torch.zeros(3)
    path = tmp_path / "w.safetensors"
    save_file(sd, str(path))
    model = _tiny(1, num_classes=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InputError) as e:
        load_weights(model, str(path))
    msg = str(e.value)
    assert "missing keys [features.0.0.weight]" in msg
    assert "unexpected keys [extra.weight]" in msg
    assert "classifier.weight: checkpoint (10, 32) vs model (5, 32)" in msg
    assert "classifier.bias: checkpoint (10,) vs model (5,)" in msg
    # Nothing was loaded on failure.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_long_mismatch_lists_are_truncated(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file({f"junk{i}": torch.zeros(1) for i in range(30)}, str(path))
    with pytest.raises(InputError, match=r"more\)"):
        load_weights(build_model("resnet20", 10, 3, 32), str(path))


def test_unsupported_extension(tmp_path: Path) -> None:
    path = tmp_path / "w.onnx"
    path.write_bytes(b"x")
    with pytest.raises(InputError, match="unsupported extension"):
        load_weights(_tiny(), str(path))
