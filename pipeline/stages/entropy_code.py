"""Stage 05, entropy-code: pack quantize's int8 model (graph + every tensor) into the coded container and check
that it decodes to a model with identical outputs."""
from __future__ import annotations

import numpy as np

from benchmarks.accuracy import onnx_predict
from pipeline.artifacts import atomic_write_json
from benchmarks.decode_timing import time_container
from pipeline.entropy.container import pack_onnx, unpack_to_onnx
from pipeline.errors import ValidationError
from pipeline.stage_api import DATASET, StageContext, StageOutput, stage

# Timings vary run to run: they go to the metrics, never into hashed files (reproducible artifact hashes).
# Absolute paths (the temp folder) neither: the stats name the file relative to the stage folder.
UNHASHED = ("decode_mb_s", "read_mb_s", "decode_mb_s_by_coder", "file")


@stage("entropy-code", reads=("entropy", DATASET), inputs=("baseline", "quantize/model.int8.onnx"), version=10,
       deliverables={"weights.lrdc": "weights.lrdc"})
def run(ctx: StageContext) -> StageOutput:
    """Pack the int8 model (graph + every tensor) into the coded container; verify it decodes to identical outputs."""
    cfg = ctx.cfg
    data = ctx.data()
    src = ctx.inputs["quantize"].path("model.int8.onnx")
    out = ctx.out_dir / "weights.lrdc"
    stats = pack_onnx(src, out, coder=cfg.entropy.coder, zstd_level=cfg.entropy.zstd_level)
    stats.update(time_container(out))  # decode/read speeds: measured here, kept out of the hashed stats
    rebuilt = ctx.out_dir / "unpacked.int8.onnx"
    unpack_to_onnx(out, rebuilt)
    x = data.test.x[:64].numpy().astype(np.float32)
    a, b = onnx_predict(src, x), onnx_predict(rebuilt, x)
    if not np.array_equal(a, b):
        raise ValidationError(f"entropy-code: unpacked model outputs differ from {src.name} (max abs {np.abs(a - b).max()})")
    rebuilt.unlink()
    atomic_write_json(ctx.out_dir / "container_stats.json",
                      {"file": out.name, **{k: v for k, v in stats.items() if k not in UNHASHED}})
    metrics = {k: v for k, v in stats.items() if k != "tensors"}
    metrics["file"] = out.name
    metrics["outputs_identical"] = True
    ctx.log.info("entropy-code: %s, %d bytes, %.3f bits/weight (order-0 bound %.3f)", out.name, stats["size_bytes"],
                 stats.get("total_bits_per_weight", float("nan")), stats.get("order0_bits_per_weight", float("nan")))
    return StageOutput(["weights.lrdc", "container_stats.json"], metrics)
