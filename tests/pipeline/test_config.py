"""Config: defaults, file + overrides precedence, strict validation with clear messages."""
from __future__ import annotations

import pytest

from pipeline.config import PipelineConfig, build_config, to_dict
from pipeline.errors import ConfigError, InputError


def test_defaults_are_the_documented_default_run():
    c = build_config()
    assert c.model == "vgg11" and c.data == "digits"
    assert c.quantize.activation_type == "uint8"


def test_align_zero_resolves_to_the_targets_channel_block():
    from benchmarks.targets import TARGETS

    c = build_config()  # default factorize.align = 0
    assert c.factorize.align == TARGETS.get("cpu").profile.channel_block in (8, 16)
    assert build_config(None, ["benchmark.target=mobile-arm"]).factorize.align == \
        TARGETS.get("mobile-arm").profile.channel_block
    assert build_config(None, ["factorize.align=8"]).factorize.align == 8  # an explicit value is kept
    assert build_config(None, ["factorize.align=1"]).factorize.align == 1
    with pytest.raises(ConfigError, match="factorize.align"):
        build_config(None, ["factorize.align=-1"])


def test_file_then_flags_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model: resnet20\nfactorize:\n  method: channel_svd\n  energy: 0.8\n")
    c = build_config(f, ["factorize.energy=0.7"], model="resnet56")
    assert c.model == "resnet56" and c.factorize.method == "channel_svd" and c.factorize.energy == 0.7


def test_toml_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[finetune]\nmethod = "lra"\n[finetune.lra]\nperiod = 50\n')
    c = build_config(f)
    assert c.finetune.method == "lra" and c.finetune.lra.period == 50


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["factorize.nope=1"], "unknown config key"),
        (["nope=1"], "unknown config key"),
        (["factorize.energy=1.5"], "out of range"),
        (["finetune.epochs=three"], "expected an integer"),
        (["quantize.per_channel=maybe"], "expected true/false"),
        (["factorize=3"], "expected a mapping"),
        (["factorize.method"], "expected KEY=VALUE"),
        (["quantize.weight_bits=12"], "out of range"),
        (["finetune.svd.phase_epochs=[1,2]"], "list of 3"),
        (["baseline.onnx_form=torch"], "'auto' or 'graph'"),
    ],
)
def test_bad_values_are_named(overrides, match):
    with pytest.raises(ConfigError, match=match):
        build_config(None, overrides)


def test_onnx_form_defaults_to_auto_and_takes_graph():
    assert build_config().baseline.onnx_form == "auto"
    assert build_config(None, ["baseline.onnx_form=graph"]).baseline.onnx_form == "graph"


def test_yaml_syntax_error_and_missing_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("factorize: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config(f)
    with pytest.raises(InputError, match="does not exist"):
        build_config(tmp_path / "missing.yaml")


def test_to_dict_round_trip():
    c = build_config(None, ["finetune.method=svd_training"])
    assert to_dict(c)["finetune"]["method"] == "svd_training"
    from pipeline.config import from_dict

    assert from_dict(PipelineConfig, to_dict(c)) == c


def test_the_readme_config_example_is_a_valid_config(tmp_path):
    """The configuration block in README.md loads, and every value in it is the default (the README stays true)."""
    from pathlib import Path

    import yaml

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = text.index("baseline:  {epochs")
    block = text[start:text.index("```", start)]
    f = tmp_path / "readme.yaml"
    f.write_text(block)
    cfg = build_config(f)
    assert to_dict(cfg) == to_dict(build_config())  # documented values = defaults
    assert set(yaml.safe_load(block)) == {"baseline", "factorize", "finetune", "quantize", "entropy", "export",
                                          "benchmark", "dataset"}


@pytest.mark.parametrize("spelling", ["1e-3", "1E-3", "0.001", "1.0e-3", " 1e-3 ", "1_0e-4"])
def test_every_float_spelling_is_accepted(spelling):
    from pipeline.config import build_config

    assert build_config(None, [f"finetune.lr={spelling}"]).finetune.lr == pytest.approx(1e-3)


@pytest.mark.parametrize("bad", ["abc", "nan", "inf", "1e400"])
def test_non_numbers_and_non_finite_floats_are_refused(bad):
    from pipeline.config import build_config
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="finetune.lr"):
        build_config(None, [f"finetune.lr={bad}"])


@pytest.mark.parametrize("bits", ["08", "8.0", "9", "1", "+4"])
def test_weight_bits_must_be_one_digit_2_to_8(bits):
    from pipeline.config import build_config
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="weight_bits"):
        build_config(None, [f'quantize.weight_bits="{bits}"'])
