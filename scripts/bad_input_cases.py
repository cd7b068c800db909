"""The bad inputs that ``scripts/bad_inputs.py`` hands the CLI: every case the hardening issue lists, and more.

A case is a name, where it comes from (``issue``: listed in the hardening issue; ``own``: added here), what is
expected (``refused``: a clear exit-2 error; ``accepted``: the input is valid and must work, possibly with a warning)
and a function that builds its input files in the case's work folder and returns the command line (the arguments of
``python -m pipeline.cli``). :class:`Ctx` gives each function the copy of the finished run it may touch.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

#: settings of the finished run every case starts from: tiny on shapes, one epoch, few samples (seconds, not minutes)
FINISHED = (
    "baseline.epochs=1", "finetune.epochs=1", "dataset.train_size=200", "dataset.val_size=50",
    "dataset.test_size=50", "quantize.calib_size=16", "quantize.max_drop=1.0", "benchmark.samples=5",
    "benchmark.warmup=1", "benchmark.max_drop=1.0",
)
#: small generated splits for the cases that run the baseline stage of another model or dataset
SMALL = ("dataset.train_size=20", "dataset.val_size=10", "dataset.test_size=10", "baseline.epochs=1")


@dataclass
class Ctx:
    """What a case may use: its own work folder, the artifacts copy and the finished run's container copy."""

    work: Path
    art: Path

    @property
    def container(self) -> Path:
        """The finished run's published weight container (inside this case's copy)."""
        return self.art / "tiny" / "deploy" / "weights.lrdc"

    def run(self, *extra: str, sets: tuple[str, ...] = FINISHED, model: str = "tiny", data: str = "shapes") -> list[str]:
        """``run`` on the artifacts copy with the finished run's settings (cached stages are reused) plus ``extra``."""
        args = ["run", "--model", model, "--data", data, "--artifacts", str(self.art), "--no-progress"]
        for s in sets:
            args += ["--set", s]
        return args + list(extra)

    def small(self, model: str, data: str = "shapes", *extra: str) -> list[str]:
        """The baseline stage only, of another model or dataset, on small splits (the case fails or passes there)."""
        sets = SMALL if data == "shapes" else ("baseline.epochs=1",)
        return self.run("--upto", "baseline", *extra, sets=sets, model=model, data=data)

    def file(self, name: str, text: str | bytes) -> Path:
        """Write a file into the work folder and return its path."""
        p = self.work / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
        return p

    def user_model(self, body: str, fn: str = "make") -> str:
        """A user model file (torch imported, a small CNN ``Net`` defined) plus ``body``; returns ``path:fn``."""
        return f"{self.file('user_model.py', USER_HEADER + body)}:{fn}"


@dataclass(frozen=True)
class Case:
    """One bad (or tricky but valid) input."""

    name: str
    source: str      # "issue" | "own"
    expect: str      # "refused" | "accepted"
    build: Callable[[Ctx], list[str]]


USER_HEADER = '''import sys, time
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes=10, fail=False, hang=False):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, num_classes)
        self.fail, self.hang = fail, hang

    def forward(self, x):
        if self.fail:
            raise ValueError("shape mismatch in my block")
        while self.hang:
            time.sleep(0.01)
        return self.fc(self.body(x))
'''


# --------------------------------------------------------------------------------------------- input builders
def _npz(ctx: Ctx, name: str, **arrays: np.ndarray) -> str:
    p = ctx.work / name
    np.savez(p, **arrays)
    return f"npz:{p}"


def _images(n: int, side: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def _folder(ctx: Ctx, name: str, classes: int = 2, per: int = 8, side: int = 16, mode: str = "RGB") -> Path:
    from PIL import Image

    root = ctx.work / name
    rng = np.random.default_rng(0)
    for c in range(classes):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for i in range(per):
            if mode == "I;16":
                a = rng.integers(0, 65536, (side, side)).astype(np.uint16)
                Image.fromarray(a).save(d / f"{i}.png")
            else:
                Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8), "RGB").save(d / f"{i}.png")
    return root


def _tiny_state(ctx: Ctx, name: str, edit: Callable[[dict], None] | None = None, model: str = "tiny") -> Path:
    from safetensors.torch import save_file

    from pipeline.models import build_model

    state = {k: v.clone().contiguous() for k, v in build_model(model, 10, 3, 32).state_dict().items()}
    if edit is not None:
        edit(state)
    p = ctx.work / name
    save_file(state, str(p))
    return p


def _first(state: dict, suffix: str) -> str:
    return next(k for k in state if k.endswith(suffix))


def _negative_var(state: dict) -> None:
    state[_first(state, "running_var")].view(-1)[0] = -1.0


def _huge_weight(state: dict) -> None:
    state[_first(state, "weight")].view(-1)[0] = 3e38


def _onnx(ctx: Ctx, name: str, opset: int = 17, in_channels: int = 3) -> Path:
    import warnings

    import onnx
    import torch
    from torch import nn

    net = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 10)).eval()
    p = ctx.work / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(1, in_channels, 32, 32),), str(p), dynamo=False, opset_version=max(opset, 9),
                          input_names=["x"], dynamic_axes={"x": {0: "n"}})
    if opset < 9:
        from onnx import version_converter

        onnx.save(version_converter.convert_version(onnx.load(str(p)), opset), str(p))
    return p


def _amplified(ctx: Ctx) -> Path:
    """A small well-formed container whose one-symbol stream declares 1 GiB (the issue's 12 KB case)."""
    from pipeline.entropy.amplify import forge, one_symbol_payload
    from pipeline.entropy.coders import CODERS

    n = 1 << 30
    data = forge(ctx.container.read_bytes(), [(CODERS.get("huffman").id, one_symbol_payload("huffman", n), n)],
                 [("big", "uint8", "uint8", [n], 0)])
    return ctx.file("amplified.lrdc", data)


def _flipped(ctx: Ctx) -> Path:
    data = bytearray(ctx.container.read_bytes())
    data[len(data) // 2] ^= 0xFF
    return ctx.file("flipped.lrdc", bytes(data))


def _batch_beyond_real_input() -> int:
    """A benchmark batch that passes the start-up bound (1x4x4 inputs) but not the real 3x32x32 one."""
    from benchmarks.latency import BATCH_MEMORY_SHARE, available_memory_bytes

    avail = available_memory_bytes() or (8 << 30)
    return int(avail * BATCH_MEMORY_SHARE / (4 * 1 * 4 * 4)) // 2


# --------------------------------------------------------------------------------------------- the cases
def _c(name: str, source: str, expect: str, build: Callable[[Ctx], list[str]]) -> Case:
    return Case(name, source, expect, build)


R, A = "refused", "accepted"
CASES: list[Case] = [
    # ---- from the issue: tracebacks
    _c("seed beyond 64 bits", "issue", R, lambda c: c.run("--seed", str(2 ** 70))),
    _c("--device cuda on a CPU build", "issue", R, lambda c: c.run("--device", "cuda")),
    _c("--device cuda:abc", "issue", R, lambda c: c.run("--device", "cuda:abc")),
    _c("export.opset=11 (QDQ needs 13)", "issue", R, lambda c: c.run("--set", "export.opset=11")),
    _c("benchmark.batch=1e13 (cannot fit at all)", "issue", R, lambda c: c.run("--set", "benchmark.batch=10000000000000")),
    _c("benchmark.batch too big for the real input", "issue", R,
       lambda c: c.run("--set", f"benchmark.batch={_batch_beyond_real_input()}")),
    _c("YAML config that is not UTF-8", "issue", R,
       lambda c: c.run("--config", str(c.file("latin1.yaml", "finetune:\n  method: k\xe9\n".encode("latin-1"))))),
    _c("unpack -o pointing at a directory", "issue", R,
       lambda c: ["unpack", str(c.container), "-o", str(c.work)]),
    _c("npz label 5e7 (6.4 GB one-hot)", "issue", R,
       lambda c: c.small("tiny", _npz(c, "big_labels.npz", x=_images(20), y=np.r_[np.zeros(19), 5e7].astype(np.int64)))),
    _c("decompression-bomb image in an image folder", "issue", R, lambda c: c.small("tiny", f"imagefolder:{_bomb(c)}")),
    _c("user factory whose forward fails", "issue", R,
       lambda c: c.small(c.user_model("def make(num_classes):\n    return Net(num_classes, fail=True)\n"))),
    _c("user factory that ignores num_classes", "issue", R,
       lambda c: c.small(c.user_model("def make():\n    return Net(3)\n"))),
    _c("user factory with no parameters", "issue", R,
       lambda c: c.small(c.user_model("def make(num_classes):\n    return nn.ReLU()\n"))),
    _c("user factory that returns a tuple", "issue", R,
       lambda c: c.small(c.user_model("def make(num_classes):\n    return Net(num_classes), 'extra'\n"))),
    _c("forward with an op ONNX cannot export", "issue", R, lambda c: c.small(c.user_model(
        "class Svd(Net):\n    def forward(self, x):\n"
        "        return self.fc(torch.linalg.svdvals(self.body[0](x).flatten(2)))\n"
        "def make(num_classes):\n    return Svd(num_classes)\n"))),
    _c("sys.exit(3) in a factory", "issue", R, lambda c: c.small(c.user_model("def make(num_classes):\n    sys.exit(3)\n"))),
    _c("sys.exit(7) at import", "issue", R, lambda c: c.small(c.user_model("sys.exit(7)\n"))),
    _c("factory that never returns (limit 2 s)", "issue", R, lambda c: c.small(
        c.user_model("def make(num_classes):\n    while True:\n        time.sleep(0.01)\n"),
        "shapes", "--set", "user_code_timeout_s=2")),
    _c("forward that never returns (limit 2 s)", "issue", R, lambda c: c.small(
        c.user_model("def make(num_classes):\n    return Net(num_classes, hang=True)\n"),
        "shapes", "--set", "user_code_timeout_s=2")),
    _c("module import that loops (limit 2 s)", "issue", R, lambda c: c.small(
        c.user_model("while True:\n    time.sleep(0.01)\n"), "shapes", "--set", "user_code_timeout_s=2")),
    # ---- from the issue: silently accepted
    _c('quantize.weight_bits="08"', "issue", R, lambda c: c.run("--set", 'quantize.weight_bits="08"')),
    _c("factorize.energy=1e-9", "issue", R, lambda c: c.run("--set", "factorize.energy=1e-9")),
    _c("one class", "issue", R,
       lambda c: c.small("tiny", _npz(c, "one_class.npz", x=_images(30), y=np.zeros(30, np.int64)))),
    _c("fewer samples than the splits need", "issue", R,
       lambda c: c.small("tiny", _npz(c, "three.npz", x=_images(3), y=np.array([0, 1, 0])))),
    _c("constant images", "issue", R, lambda c: c.small(
        "tiny", _npz(c, "const.npz", x=np.full((30, 16, 16, 3), 7, np.uint8), y=np.arange(30) % 2))),
    _c("inputs smaller than the network's downsampling", "issue", R, lambda c: c.small(c.user_model(
        "class Down(Net):\n    def __init__(self, n):\n        super().__init__(n)\n"
        "        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3), nn.MaxPool2d(2),\n"
        "                                  nn.Conv2d(8, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())\n"
        "def make(num_classes):\n    return Down(num_classes)\n"), "shapes", "--set", "dataset.input_size=[16, 16]")),
    _c("non-image file inside an image-folder class (warned)", "issue", A,
       lambda c: c.small("tiny", f"imagefolder:{_with_note(c)}")),
    _c("ONNX opset 7 graph (converted, not the graph path)", "issue", A,
       lambda c: c.small(str(_onnx(c, "opset7.onnx", opset=7)))),
    _c("12 KB container declaring 1 GiB (unpack)", "issue", R,
       lambda c: ["unpack", str(_amplified(c)), "-o", str(c.work / "out.onnx")]),
    _c("--model path/tiny.py:make (own folder, not tiny's)", "issue", A,
       lambda c: c.small(f"{c.file('sub/tiny.py', USER_HEADER + 'def make(num_classes):' + chr(10) + '    return Net(num_classes)' + chr(10))}:make")),
    _c("16-bit PNG image folder (scaled, not saturated)", "issue", A,
       lambda c: c.small("tiny", f"imagefolder:{_folder(c, 'png16', mode='I;16')}")),
    _c("checkpoint with negative BN variance", "issue", R,
       lambda c: c.run("--weights", str(_tiny_state(c, "negvar.safetensors", _negative_var)))),
    _c("checkpoint with 3e38 weights", "issue", R,
       lambda c: c.run("--weights", str(_tiny_state(c, "huge.safetensors", _huge_weight)))),
    _c("directory passed as --weights", "issue", R, lambda c: c.run("--weights", str(c.work))),
    _c("directory passed as --config", "issue", R, lambda c: c.run("--config", str(c.work))),
    _c("directory passed as npz data", "issue", R, lambda c: c.small("tiny", f"npz:{c.work}")),
    _c("directory passed as the model file", "issue", R, lambda c: c.small(f"{_dir(c, 'net.py')}:make")),
    _c("directory passed as an ONNX model", "issue", R, lambda c: c.small(str(_dir(c, "model.onnx")))),
    _c("directory passed as the container to unpack", "issue", R,
       lambda c: ["unpack", str(_dir(c, "w.lrdc")), "-o", str(c.work / "out.onnx")]),
    _c("--set finetune.lr=1e-3 (YAML 1.1 float)", "issue", A,
       lambda c: ["config", "--set", "finetune.lr=1e-3", "--model", "tiny"]),
    _c("YAML lr: 1e-3", "issue", A,
       lambda c: ["config", "--config", str(c.file("lr.yaml", "finetune:\n  lr: 1e-3\n"))]),
    # ---- our own
    _c("unknown model name", "own", R, lambda c: c.run("--model", "resnet9000")),
    _c("unknown dataset", "own", R, lambda c: c.run("--data", "nosuchdata")),
    _c("unknown config key", "own", R, lambda c: c.run("--set", "factorize.nosuch=1")),
    _c("unknown config section", "own", R, lambda c: c.run("--set", "compress.level=3")),
    _c("wrong type (epochs=abc)", "own", R, lambda c: c.run("--set", "baseline.epochs=abc")),
    _c("negative epochs", "own", R, lambda c: c.run("--set", "baseline.epochs=-1")),
    _c("--set without '='", "own", R, lambda c: c.run("--set", "factorize.method")),
    _c("value where a section is expected", "own", R, lambda c: c.run("--set", "factorize=3")),
    _c("--upto an unknown stage", "own", R, lambda c: c.run("--upto", "deploy")),
    _c("--only an earlier stage not cached for the config", "own", R,
       lambda c: c.run("--only", "export", "--set", "finetune.epochs=2")),
    _c("negative --seed", "own", R, lambda c: c.run("--seed", "-1")),
    _c("--nproc 0", "own", R, lambda c: c.run("--nproc", "0")),
    _c("missing config file", "own", R, lambda c: c.run("--config", str(c.work / "nope.yaml"))),
    _c("YAML syntax error", "own", R, lambda c: c.run("--config", str(c.file("bad.yaml", "finetune: [1,\n")))),
    _c("YAML that is a list, not a mapping", "own", R, lambda c: c.run("--config", str(c.file("list.yaml", "- 1\n- 2\n")))),
    _c("TOML syntax error", "own", R, lambda c: c.run("--config", str(c.file("bad.toml", "[finetune\nlr = 1\n")))),
    _c("TOML that is not UTF-8", "own", R,
       lambda c: c.run("--config", str(c.file("latin1.toml", "[finetune]\nmethod = 'k\xe9'\n".encode("latin-1"))))),
    _c("factorize.energy=1.5", "own", R, lambda c: c.run("--set", "factorize.energy=1.5")),
    _c("unknown factorize.method", "own", R, lambda c: c.run("--set", "factorize.method=svd9")),
    _c("unknown entropy.coder", "own", R, lambda c: c.run("--set", "entropy.coder=lzma")),
    _c("entropy.zstd_level=99", "own", R, lambda c: c.run("--set", "entropy.zstd_level=99")),
    _c("benchmark.threads=0", "own", R, lambda c: c.run("--set", "benchmark.threads=0")),
    _c("unknown export.mobile_target", "own", R, lambda c: c.run("--set", "export.mobile_target=ios")),
    _c("quantize.qat_epochs with 8-bit weights", "own", R, lambda c: c.run("--set", "quantize.qat_epochs=2")),
    _c("finetune.lr=nan", "own", R, lambda c: c.run("--set", "finetune.lr=nan")),
    _c("dataset.input_size=[2, 2]", "own", R, lambda c: c.run("--set", "dataset.input_size=[2, 2]")),
    _c("split size set on a file dataset", "own", R, lambda c: c.small(
        "tiny", _npz(c, "ok.npz", x=_images(30), y=np.arange(30) % 2), "--set", "dataset.train_size=10")),
    _c("weights file with an unknown extension", "own", R, lambda c: c.run("--weights", str(c.file("w.txt", "hi")))),
    _c("weights file that is not safetensors", "own", R,
       lambda c: c.run("--weights", str(c.file("junk.safetensors", b"\x00" * 64)))),
    _c("checkpoint of another architecture", "own", R,
       lambda c: c.run("--weights", str(_tiny_state(c, "resnet20.safetensors", model="resnet20")))),
    _c("pickle checkpoint with a code payload", "own", R, lambda c: c.run("--weights", str(_evil_pickle(c)))),
    _c("garbage ONNX file", "own", R, lambda c: c.small(str(c.file("garbage.onnx", b"\x00\x01not a protobuf" * 20)))),
    _c("ONNX model with 1 input channel on RGB data", "own", R,
       lambda c: c.small(str(_onnx(c, "gray.onnx", in_channels=1)))),
    _c("--weights with an ONNX model", "own", R, lambda c: c.small(
        str(_onnx(c, "m.onnx")), "shapes", "--weights", str(_tiny_state(c, "w.safetensors")))),
    _c("model file that does not exist", "own", R, lambda c: c.small(f"{c.work / 'gone.py'}:make")),
    _c("model file without the factory", "own", R, lambda c: c.small(c.user_model("", fn="nothere"))),
    _c("model file with a syntax error", "own", R, lambda c: c.small(c.user_model("def make(:\n"))),
    _c("npz without x", "own", R, lambda c: c.small("tiny", _npz(c, "nox.npz", images=_images(4)))),
    _c("npz with negative labels", "own", R,
       lambda c: c.small("tiny", _npz(c, "neg.npz", x=_images(20), y=np.full(20, -3)))),
    _c("npz file that does not exist", "own", R, lambda c: c.small("tiny", f"npz:{c.work / 'missing.npz'}")),
    _c("empty image folder", "own", R, lambda c: c.small("tiny", f"imagefolder:{_empty(c)}")),
    _c("image folder with one class", "own", R,
       lambda c: c.small("tiny", f"imagefolder:{_folder(c, 'one', classes=1)}")),
    _c("fake PNG in an image folder", "own", R, lambda c: c.small("tiny", f"imagefolder:{_fake_png(c)}")),
    _c("artifacts folder not writable", "own", R,
       lambda c: ["run", "--model", "tiny", "--data", "shapes", "--artifacts", "/proc/lrd-bad-inputs", "--no-progress"]),
    _c("unpack a container with a flipped byte", "own", R,
       lambda c: ["unpack", str(_flipped(c)), "-o", str(c.work / "out.onnx")]),
    _c("unpack a truncated container", "own", R, lambda c: [
        "unpack", str(c.file("trunc.lrdc", c.container.read_bytes()[:100])), "-o", str(c.work / "out.onnx")]),
    _c("unpack a file that does not exist", "own", R,
       lambda c: ["unpack", str(c.work / "none.lrdc"), "-o", str(c.work / "out.onnx")]),
    _c("unpack -o into a folder that does not exist", "own", R,
       lambda c: ["unpack", str(c.container), "-o", str(c.work / "no" / "such" / "out.onnx")]),
]


def _bomb(ctx: Ctx) -> Path:
    from PIL import Image

    from pipeline.data.imagefolder import MAX_IMAGE_PIXELS

    root = _folder(ctx, "bomb")
    side = int(np.sqrt(MAX_IMAGE_PIXELS)) + 64  # just above the limit
    Image.new("L", (side, side)).save(root / "class0" / "bomb.png")
    return root


def _with_note(ctx: Ctx) -> Path:
    root = _folder(ctx, "noted")
    (root / "class1" / "notes.txt").write_text("not an image\n")
    return root


def _dir(ctx: Ctx, name: str) -> Path:
    p = ctx.work / name
    p.mkdir()
    return p


def _empty(ctx: Ctx) -> Path:
    p = ctx.work / "empty"
    p.mkdir()
    return p


def _fake_png(ctx: Ctx) -> Path:
    root = _folder(ctx, "fake")
    (root / "class0" / "fake.png").write_text("not a png")
    return root


def _evil_pickle(ctx: Ctx) -> Path:
    import torch

    class Boom:  # unpickling would create a file
        def __reduce__(self):
            return (open, (str(ctx.work / "pwned"), "w"))

    p = ctx.work / "evil.pt"
    torch.save({"x": Boom()}, p)
    return p


def by_name(names: list[str]) -> list[Case]:
    """The cases with these names, in that order (KeyError for an unknown one)."""
    table = {c.name: c for c in CASES}
    return [table[n] for n in names]


def case_list_digest() -> str:
    """sha256 of the case names, sources and expectations."""
    import hashlib

    return hashlib.sha256(json.dumps([[c.name, c.source, c.expect] for c in CASES]).encode()).hexdigest()[:12]

