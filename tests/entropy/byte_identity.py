"""Byte-identity check of the LRDC packer across a refactor (a script, not a test: run it by hand).

``record DIR``: build a few int8 QDQ models (a tiny CNN at 8 and 4 bits, a resnet20 with seeded random weights, the
fuzzer's seed model), save them under ``DIR/models``, pack each with every coder, ``auto`` and ``auto`` without
pooling, and write the containers' sha256s to ``DIR/hashes.json``. ``check DIR``: pack the *saved* models again with
the code on ``PYTHONPATH`` and compare with the recorded hashes (the ONNX files are reused, so export or quantizer
nondeterminism cannot hide or fake a difference). Exit code 1 on any difference.

    PYTHONPATH=$PWD python tests/entropy/byte_identity.py record /tmp/bi   # with the old code
    PYTHONPATH=$PWD python tests/entropy/byte_identity.py check /tmp/bi    # with the new code
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

CODERS = ("raw", "zstd", "huffman", "rans", "rans16", "rans16ch", "planes", "auto")


def _models(d: Path) -> list[Path]:
    import torch

    from pipeline.config import QuantizeConfig
    from pipeline.entropy.fuzz import seed_model
    from pipeline.models import build_model
    from pipeline.quantize.ort_static import quantize_static
    from pipeline.quantize.weights import apply_weight_bits_to_qdq
    from tests.helpers.onnx_models import export, images, tiny_net

    d.mkdir(parents=True, exist_ok=True)
    export(tiny_net(0), d / "tiny.fp32.onnx")
    quantize_static(d / "tiny.fp32.onnx", d / "tiny.int8.onnx", images(8), QuantizeConfig(calib_size=8))
    apply_weight_bits_to_qdq(d / "tiny.int8.onnx", d / "tiny.int4.onnx", "4")
    torch.manual_seed(0)
    net = build_model("resnet20", 10, 3, 16).eval()
    export(net, d / "resnet20.fp32.onnx")
    quantize_static(d / "resnet20.fp32.onnx", d / "resnet20.int8.onnx", images(8), QuantizeConfig(calib_size=8))
    apply_weight_bits_to_qdq(d / "resnet20.int8.onnx", d / "resnet20.int4.onnx", "4")
    seed_model(d / "fuzzseed.onnx")
    return sorted(p for p in d.glob("*.onnx") if ".fp32." not in p.name)


def _pack_all(models: list[Path], work: Path) -> dict[str, str]:
    from pipeline.entropy.container import pack_onnx

    work.mkdir(parents=True, exist_ok=True)
    out = {}
    for m in models:
        for coder in CODERS:
            for pool in ((True, False) if coder == "auto" else (True,)):
                f = work / f"{m.stem}.{coder}.{int(pool)}.lrdc"
                pack_onnx(m, f, coder=coder, zstd_level=19 if coder == "auto" else 3, pool=pool)
                out[f.name] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def main(argv: list[str]) -> int:
    mode, d = argv[0], Path(argv[1])
    if mode == "record":
        hashes = _pack_all(_models(d / "models"), d / "old")
        (d / "hashes.json").write_text(json.dumps(hashes, indent=1, sort_keys=True))
        print(f"recorded {len(hashes)} containers")
        return 0
    old = json.loads((d / "hashes.json").read_text())
    new = _pack_all(sorted(p for p in (d / "models").glob("*.onnx") if ".fp32." not in p.name), d / "new")
    bad = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    print(f"{len(old) - len(bad)}/{len(old)} containers byte-identical" + (f"; differ: {bad}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
