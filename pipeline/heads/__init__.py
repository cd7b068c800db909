"""Output heads of any model a user brings: what each output is, how close a variant stays to the original, and
whether it may ship. One module per job:

* :mod:`.kinds` -- the output kind (``classify`` / ``dense`` / ``sequence`` / ``embedding``) from output shapes,
  overridable by ``task``; :class:`HeadSpec` carries what the metrics need (layout, value range, blank index);
* :mod:`.fidelity` -- a variant against the original per kind (top-1 agreement; IoU of thresholded maps and mean
  abs error; CTC non-blank step agreement and exact-sequence rate; cosine and relative L2), and over several outputs;
* :mod:`.accuracy` -- against labels when the data has them (top-1; mIoU / pixel accuracy; CTC exact sequence);
* :mod:`.distill` -- torch distillation losses from the original's raw outputs for unlabelled data;
* :mod:`.latency_stats` -- the p50 ratio's bootstrap confidence interval and the sample count a stable ratio needs;
* :mod:`.gate` -- the ``max_drop`` fidelity gate over every candidate variant and the per-target choice of what ships;
* :mod:`.measure` -- every output of an ONNX file over a dataset, the heads probed from a file, Measurement entries.

Plain numpy in, plain dicts out (torch only in :mod:`.distill`, ONNX Runtime only in :mod:`.measure`); nothing here
imports the stages.
"""
from __future__ import annotations

from pipeline.heads.accuracy import ctc_exact_accuracy, dense_label_scores, label_accuracy, top1_accuracy
from pipeline.heads.distill import distill_loss, distill_loss_fn
from pipeline.heads.fidelity import (ctc_greedy_decode, embedding_fidelity, classify_fidelity, dense_fidelity,
                                     head_fidelity, multi_fidelity, sequence_fidelity)
from pipeline.heads.gate import (FidelityGateError, GateCriteria, GateResult, Measurement, gate_variants)
from pipeline.heads.kinds import KINDS, TASKS, HeadSpec, batch_axis_from_probes, detect_heads
from pipeline.heads.latency_stats import RatioCI, median_ratio_ci, samples_needed
from pipeline.heads.measure import onnx_outputs, output_entries, probe_onnx_heads

__all__ = ["KINDS", "TASKS", "FidelityGateError", "GateCriteria", "GateResult", "HeadSpec", "Measurement", "RatioCI",
           "batch_axis_from_probes", "classify_fidelity", "ctc_exact_accuracy", "ctc_greedy_decode",
           "dense_fidelity", "dense_label_scores", "detect_heads", "distill_loss", "distill_loss_fn",
           "embedding_fidelity", "gate_variants", "head_fidelity", "label_accuracy", "median_ratio_ci",
           "multi_fidelity", "onnx_outputs", "output_entries", "probe_onnx_heads", "samples_needed", "sequence_fidelity", "top1_accuracy"]
