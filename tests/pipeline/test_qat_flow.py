"""With quantization-aware training on, the QAT model is the one fp32 model: finetune trains it, export writes it,
quantize quantizes exactly export's file (issue 14: deploy/model.onnx used not to be the source of the int8 model)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from pipeline.runner import run

from .conftest import fast_config


def test_export_writes_the_qat_model_and_quantize_quantizes_it(tmp_path):
    res = run(fast_config(tmp_path / "art", "export.mobile=false", "quantize.weight_bits=4", "quantize.qat_epochs=1"),
              upto="quantize", progress=False)
    assert res.artifact("finetune").metrics["qat"]["bits"] == 4
    assert res.artifact("quantize").metrics["source"] == "export/model.onnx"
    m = onnx.load(str(res.artifact("export").path("model.onnx")))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    convs = [inits[n.input[1]] for n in m.graph.node if n.op_type == "Conv" and n.input[1] in inits]
    assert convs
    for w in convs:
        # 4-bit symmetric grid per output channel: at most 2 * 7 + 1 levels (BN folding scales a channel's grid)
        per_channel = [len(np.unique(np.round(c / np.abs(c).max(), 5))) for c in w.reshape(len(w), -1) if np.abs(c).max() > 0]
        assert max(per_channel) <= 15
    # the snap keeps the per-channel steps the finetune trained (weight_grid=auto resolves to channel under QAT)
    wb = res.artifact("quantize").metrics["weight_bits"]
    assert wb["grid"] == "channel" and set(wb["bits"].values()) == {4}


def test_qat_refuses_a_grid_it_does_not_train(tmp_path):
    import pytest

    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="weight_grid=channel"):
        fast_config(tmp_path / "art", "quantize.weight_bits=4", "quantize.qat_epochs=1", "quantize.weight_grid=layer")
