"""Fidelity metrics (variant vs original) and label accuracy, each against a hand computation on tiny arrays."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.errors import ConfigError, InputError, ValidationError
from pipeline.heads import (HeadSpec, classify_fidelity, ctc_exact_accuracy, ctc_greedy_decode, dense_fidelity,
                            dense_label_scores, embedding_fidelity, head_fidelity, label_accuracy, multi_fidelity,
                            sequence_fidelity, top1_accuracy)


def test_top1_agreement_three_of_four() -> None:
    ref = np.array([[2, 1, 0], [0, 3, 1], [1, 0, 5], [4, 0, 0]], dtype=float)   # argmax 0, 1, 2, 0
    out = np.array([[3, 1, 0], [0, 2, 1], [6, 0, 5], [4, 1, 0]], dtype=float)   # argmax 0, 1, 0, 0
    assert classify_fidelity(ref, out) == {"agreement": 0.75}
    with pytest.raises(ValidationError, match="output shapes"):
        classify_fidelity(ref, out[:, :2])


def test_dense_iou_on_probability_maps() -> None:
    # 1 image, 1 channel, 2x3; threshold 0.5. ref foreground: (0,0),(0,1),(1,0); out: (0,1),(1,0),(1,2)
    ref = np.array([[[[0.9, 0.8, 0.1], [0.7, 0.2, 0.4]]]])
    out = np.array([[[[0.4, 0.6, 0.1], [0.9, 0.3, 0.6]]]])
    m = dense_fidelity(ref, out, values="prob")
    assert m["threshold"] == 0.5
    assert m["iou"] == pytest.approx(2 / 4)                    # intersection 2, union 4
    # |diff| = .5 .2 0 .2 .1 .2 -> mean 1.2 / 6 = 0.2
    assert m["mae"] == pytest.approx(0.2)


def test_dense_iou_on_logit_maps_thresholds_at_zero() -> None:
    ref = np.array([[[[2.0, -1.0], [0.5, -3.0]]]])             # foreground (0,0), (1,0)
    out = np.array([[[[1.0, 0.2], [-0.1, -2.0]]]])             # foreground (0,0), (0,1)
    m = dense_fidelity(ref, out, values="logit")
    assert m["threshold"] == 0.0 and m["iou"] == pytest.approx(1 / 3)
    # read as probabilities (threshold 0.5, strict) both maps keep only (0,0): IoU 1 -- the value kind matters
    assert dense_fidelity(ref, out, values="prob")["iou"] == 1.0
    empty = np.zeros((1, 1, 2, 2)) - 1
    assert dense_fidelity(empty, empty)["iou"] == 1.0          # two empty maps agree


def test_dense_multiclass_mean_iou_over_classes() -> None:
    # argmax maps: ref [[0, 1], [1, 2]], out [[0, 1], [2, 2]] -> IoU class0 1/1, class1 1/2, class2 1/2 -> 2/3
    def onehot(lab):
        return np.eye(3)[np.array(lab)].transpose(2, 0, 1)[None]
    m = dense_fidelity(onehot([[0, 1], [1, 2]]), onehot([[0, 1], [2, 2]]), values="prob")
    assert m["iou"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert "threshold" not in m


def test_ctc_greedy_decoding_collapses_repeats_and_drops_blank() -> None:
    # argmax path 1 1 0 1 2 2 0 -> collapse: 1 0 1 2 0 -> drop blank 0: (1, 1, 2)
    path = [1, 1, 0, 1, 2, 2, 0]
    logits = np.eye(3)[path][None]
    assert ctc_greedy_decode(logits) == [(1, 1, 2)]
    assert ctc_greedy_decode(logits, blank=2) == [(1, 0, 1, 0)]


def test_sequence_step_agreement_and_exact_rate() -> None:
    eye = np.eye(4)
    ref = np.stack([eye[[0, 1, 1, 0, 2]], eye[[0, 0, 3, 0, 0]]])  # decodes (1, 2) and (3,)
    out = np.stack([eye[[0, 1, 0, 0, 2]], eye[[0, 0, 0, 2, 0]]])  # decodes (1, 2) and (2,)
    m = sequence_fidelity(ref, out)
    # non-blank steps (either side): sample 0 steps 1,2,4 (agree at 1,4); sample 1 steps 2,3 (agree at none)
    assert m["step_agreement"] == pytest.approx(2 / 5)
    assert m["exact"] == pytest.approx(1 / 2)


def test_embedding_cosine_and_relative_l2() -> None:
    ref = np.array([[1.0, 0.0], [0.0, 2.0]])
    out = np.array([[1.0, 1.0], [0.0, 2.0]])
    m = embedding_fidelity(ref, out)
    assert m["cosine"] == pytest.approx((1 / math.sqrt(2) + 1) / 2)
    assert m["rel_l2"] == pytest.approx(1 / math.sqrt(5))     # ||diff|| = 1, ||ref|| = sqrt(5)
    zeros = np.zeros((1, 3))
    assert embedding_fidelity(zeros, zeros) == {"cosine": 1.0, "rel_l2": 0.0}


def test_head_fidelity_reads_the_layout_and_multi_output_lists_each() -> None:
    eye = np.eye(3)
    ref_ntk = np.stack([eye[[1, 0, 2]], eye[[2, 2, 0]]])       # N=2, T=3
    out_ntk = np.stack([eye[[1, 0, 2]], eye[[1, 2, 0]]])
    ctc = HeadSpec("ctc", "sequence", "TNK", "prob", 3)
    m = head_fidelity(ctc, ref_ntk.transpose(1, 0, 2), out_ntk.transpose(1, 0, 2))
    assert m["exact"] == pytest.approx(0.5) and m["kind"] == "sequence"
    cls = HeadSpec("logits", "classify", "NK", "logit", 3)
    both = multi_fidelity([cls, ctc], [eye, ref_ntk.transpose(1, 0, 2)], [eye[[0, 2, 2]], ref_ntk.transpose(1, 0, 2)])
    assert [b["name"] for b in both] == ["logits", "ctc"]
    assert both[0]["agreement"] == pytest.approx(2 / 3) and both[1]["exact"] == 1.0


def test_label_accuracy_per_kind() -> None:
    logits = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    assert top1_accuracy(logits, np.array([0, 0, 0])) == pytest.approx(2 / 3)
    with pytest.raises(InputError, match="3 predictions but 4 labels"):
        top1_accuracy(logits, np.zeros(4))
    # single-channel probability map -> foreground/background [[1, 0], [1, 1]] vs labels [[1, 0], [0, 1]]
    maps = np.array([[[[0.9, 0.1], [0.6, 0.7]]]])
    s = dense_label_scores(maps, np.array([[[1, 0], [0, 1]]]), values="prob")
    assert s["pixel_acc"] == pytest.approx(3 / 4)
    assert s["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)     # background 1/2, foreground 2/3
    s = dense_label_scores(maps, np.array([[[1, 255], [255, 1]]]), values="prob", ignore_index=255)
    assert s == {"miou": 1.0, "pixel_acc": 1.0}
    with pytest.raises(InputError, match="output's resolution"):
        dense_label_scores(maps, np.zeros((1, 4, 4)))
    eye = np.eye(3)
    seq = np.stack([eye[[1, 1, 0, 2]], eye[[0, 2, 0, 2]]])     # decodes (1, 2) and (2, 2)
    assert ctc_exact_accuracy(seq, [[1, 2], [2]]) == 0.5
    assert ctc_exact_accuracy(seq, np.array([[1, 2], [2, 2]])) == 1.0
    assert ctc_exact_accuracy(seq, np.array([[1, 2, -1], [2, -1, -1]])) == 0.5   # negative values pad
    spec = HeadSpec("map", "dense", "NCHW", "prob", 1)
    assert label_accuracy(spec, maps, np.array([[[1, 0], [0, 1]]]))["accuracy"] == pytest.approx(7 / 12)
    with pytest.raises(ConfigError, match="embedding"):
        label_accuracy(HeadSpec("e", "embedding", "ND"), logits, np.zeros(3))
