"""Output-kind detection from shapes and values, the batch axis from two probes, and the task override."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.heads import HeadSpec, batch_axis_from_probes, detect_heads
from pipeline.heads.kinds import value_range

R = np.random.default_rng(0)


def _probe(shape_fn, n: int) -> np.ndarray:
    return R.standard_normal(shape_fn(n)).astype(np.float32)


def test_batch_axis_from_two_probes_and_one() -> None:
    assert batch_axis_from_probes((32, 1, 11), 1, (32, 2, 11), 2) == 1
    assert batch_axis_from_probes((1, 32, 11), 1, (2, 32, 11), 2) == 0
    assert batch_axis_from_probes((32, 1, 11), 1) == 1          # one probe: the leading axis equal to the batch
    with pytest.raises(ConfigError, match="ambiguous"):
        batch_axis_from_probes((4, 4, 11), 4)                    # T == N: cannot tell without a second probe
    assert batch_axis_from_probes((4, 4, 11), 4, (4, 5, 11), 5) == 1
    with pytest.raises(ConfigError, match="no single axis"):
        batch_axis_from_probes((2, 3), 1, (4, 6), 2)


@pytest.mark.parametrize("shape_fn,kind,layout", [
    (lambda n: (n, 10), "classify", "NK"),
    (lambda n: (n, 1), "embedding", "ND"),
    (lambda n: (n, 1, 48, 80), "dense", "NCHW"),
    (lambda n: (n, 3, 12, 20), "dense", "NCHW"),
    (lambda n: (32, n, 37), "sequence", "TNK"),
    (lambda n: (n, 32, 37), "sequence", "NTK"),
    (lambda n: (n, 24, 40), "dense", "NHW"),                    # 24x40 has the 48x80 input's aspect ratio
    (lambda n: (n,), "embedding", "ND"),
])
def test_auto_kind_from_shapes(shape_fn, kind: str, layout: str) -> None:
    spec = detect_heads([_probe(shape_fn, 2)], 2, [_probe(shape_fn, 3)], 3, input_hw=(48, 80))[0]
    assert (spec.kind, spec.layout) == (kind, layout)


def test_unit_norm_rows_and_names_make_embeddings() -> None:
    e = R.standard_normal((3, 8))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    assert detect_heads([e], 3)[0].kind == "embedding"
    assert detect_heads([R.standard_normal((3, 8))], 3, names=["face_embedding"])[0].kind == "embedding"
    assert detect_heads([R.standard_normal((3, 8))], 3, names=["logits"])[0].kind == "classify"


def test_several_outputs_give_a_list_of_kinds() -> None:
    a = [R.standard_normal((1, 10)), R.standard_normal((1, 2, 8, 8)), R.standard_normal((16, 1, 5))]
    b = [R.standard_normal((2, 10)), R.standard_normal((2, 2, 8, 8)), R.standard_normal((16, 2, 5))]
    specs = detect_heads(a, 1, b, 2, names=["cls", "seg", "ctc"], blank=4)
    assert [s.kind for s in specs] == ["classify", "dense", "sequence"]
    assert [s.num_classes for s in specs] == [10, 2, 5]
    assert specs[2].blank == 4 and specs[0].blank == 0


def test_task_override_and_its_errors() -> None:
    x = R.standard_normal((2, 10))
    assert detect_heads([x], 2, task="embedding")[0].kind == "embedding"
    two = [x, R.standard_normal((2, 16))]
    assert [s.kind for s in detect_heads(two, 2, task=["auto", "embedding"])] == ["classify", "embedding"]
    with pytest.raises(ConfigError, match="unknown value"):
        detect_heads([x], 2, task="detect")
    with pytest.raises(ConfigError, match=r"task dense needs"):
        detect_heads([x], 2, task="dense")
    with pytest.raises(ConfigError, match="one per output"):
        detect_heads(two, 2, task=["auto"])
    with pytest.raises(ConfigError, match="no known head"):
        detect_heads([R.standard_normal((2, 2, 2, 2, 2))], 2, [R.standard_normal((3, 2, 2, 2, 2))], 3)


def test_value_ranges() -> None:
    logits = R.standard_normal((4, 5))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert value_range(logits, 1) == "logit"
    assert value_range(p, 1) == "prob"
    assert value_range(np.log(p), 1) == "logprob"
    assert value_range(-np.abs(logits), 1) == "logit"             # all <= 0 but not normalised


def test_spec_round_trips_and_canonical_layouts() -> None:
    spec = HeadSpec("ctc", "sequence", "TNK", "prob", 11, 0)
    assert HeadSpec.from_dict(spec.as_dict()) == spec
    a = np.arange(2 * 3 * 4).reshape(2, 3, 4)                   # T=2, N=3, K=4
    assert spec.canonical(a).shape == (3, 2, 4) and spec.canonical(a)[1, 0, 2] == a[0, 1, 2]
    assert HeadSpec("m", "dense", "NHW").canonical(a).shape == (2, 1, 3, 4)
    assert HeadSpec("e", "embedding", "ND").canonical(a).shape == (2, 12)
