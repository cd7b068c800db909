"""Configuration: one frozen dataclass per stage, loaded from YAML/TOML plus ``--set key=value`` overrides.

Validation is strict: unknown keys, wrong types and out-of-range values raise ConfigError naming the key.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional, Union

from pipeline.errors import ConfigError, InputError


# ----------------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class DatasetConfig:
    """How the ``data`` dataset is loaded; read by every stage that loads data (None = the dataset's default).

    The split sizes apply to generated datasets (``shapes``), whose image counts are a choice; a dataset read from
    files has the split its files give, and a size set for it is rejected.
    """

    train_size: Optional[int] = None
    val_size: Optional[int] = None
    test_size: Optional[int] = None
    # [H, W] the images are resized to (bilinear per axis, aspect not kept, no padding); None: the ONNX model's fixed
    # input when it declares one, else the size the files store. Generated datasets take square sizes only.
    input_size: Optional[tuple[int, int]] = None


# ----------------------------------------------------------------------------------------------- stages
@dataclass(frozen=True)
class BaselineConfig:
    """Stage 00: train the original model on the dataset when no weights are given (else load and check them)."""

    epochs: int = 15
    batch_size: int = 32             # small datasets (digits: 1078 train images) need steps more than big batches
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    augment: bool = True
    # Linear LR warm-up before the cosine decay. Deep nets (resnet56: lr 0.05 at batch 32 is ~0.2 at batch 128) stay
    # at chance without it, as He et al. found for ResNet-110 (they warm up at 0.1x the LR).
    warmup_epochs: float = 1.0
    # how an ONNX model is taken: auto (imported to torch where the importer can, so it can be finetuned; else its
    # graph) | graph (always the graph: factorized on the ONNX graph with the fidelity fallback, no finetuning)
    onnx_form: str = "auto"


@dataclass(frozen=True)
class BudgetConfig:
    """Whole-model targets for the ``budget`` rank selector, as fractions of the original (None = unused)."""

    macs: Optional[float] = None
    params: Optional[float] = None
    latency: Optional[float] = None
    target: str = "cpu"
    eval_samples: int = 256


@dataclass(frozen=True)
class SearchConfig:
    """The default rank search (``selector=search``, pipeline/factorize/search.py)."""

    # whole-model MAC fractions tried, mildest first (1/2 ... 1/11 of the original's MACs); measured as the default on
    # vgg11, resnet18_cifar and resnet56 on digits (README, Rank search)
    levels: tuple[float, ...] = (0.5, 0.35, 0.25, 0.18, 0.13, 0.09)
    probe_images: int = 1024       # training images of each level's one-pass distillation probe
    # a level passes when its probe val accuracy is within this of the original's. Strict on purpose: one pass
    # recovers less than the finetune's epochs (resnet56 on digits at 1/2 of the MACs: probe -8.3 points, -0.56 on
    # test after 4 KD epochs), so a too strict probe costs speed, not accuracy; the finetune stage's back-off covers
    # a probe that was too optimistic
    probe_drop: float = 0.03
    min_gain: float = 0.03         # a level must be this fraction faster than every milder one to stay a candidate
    backoffs: int = 2              # milder levels the finetune stage may fall back to when max_drop is missed
    # a mild MAC fraction built and timed but never probed: the last back-off (narrow models, whose only searched
    # level misses max_drop, e.g. resnet20 on shapes at 1/2: -1.2 points on val); 0 = none
    fallback_level: float = 0.7


@dataclass(frozen=True)
class FactorizeConfig:
    """Stage 01: replace conv/linear layers by low-rank forms."""

    method: str = "tucker2"          # a registered format, or "auto"
    linear_method: str = "linear_svd"  # format for nn.Linear layers ("none" keeps them dense)
    # search (the default: ranks searched against measured latency and a distillation probe, see
    # pipeline/factorize/search.py) | energy | erank | vbmf | fixed | budget
    selector: str = "search"
    energy: float = 0.6              # fraction of squared singular-value energy kept (selector=energy)
    ratio: float = 0.25              # fraction of channels kept (selector=fixed)
    erank_factor: float = 1.0        # rank = ceil(erank * factor) (selector=erank)
    align: int = 0                   # round ranks up to a multiple of this (8: AVX2, 16: AVX-512/NPU); 1 = off;
                                     # 0 = the benchmark target's channel block (resolved when the config is built)
    min_channels: int = 32           # layers with fewer in or out channels stay dense (overhead-bound)
    min_mac_saving: float = 0.1      # keep dense unless the factorized form saves at least this fraction of MACs
    skip_first: bool = True          # the stem conv sees raw pixels (few channels): keep dense
    skip_last_linear: bool = True    # the classifier is tiny next to the convs and sensitive
    hooi_iters: int = 0              # Tucker-2 HOOI refinement iterations (0 = HOSVD only)
    cp_max_iters: int = 50
    cp_time_limit_s: float = 2.0     # per-layer wall-time cap for CP-ALS
    break_even: bool = False         # keep a layer dense unless its factorized form measures faster on the target
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    objective: str = "weights"       # weights (minimise the weight error) | outputs (the layer outputs on calibration data)
    sequential: bool = False         # objective=outputs: each layer's statistics after its predecessors are factorized
    calib_images: int = 64           # calibration images for objective=outputs / layerwise_steps
    calib_positions: int = 128       # sampled positions per image and statistic (bounds the moment cost)
    whiten_eps: float = 1e-6         # ridge eps * tr(C)/d added to each input moment before it is factored
    layerwise_steps: int = 0         # Adam steps per factorized layer matching the dense layer's outputs (0 = off)
    layerwise_lr: float = 1e-3


@dataclass(frozen=True)
class SVDTrainingConfig:
    """Yang et al. 2020 hyper-parameters (CIFAR defaults; see docs/methods.md)."""

    form: str = "channel"           # channel | spatial
    lambda_o: float = 1.0
    lambda_s: float = 0.07
    sparsity: str = "hoyer"         # l1 | hoyer | hoyer_square | erank
    prune_energy: float = 0.01      # energy threshold e for pruning singular values
    prune_macs: Optional[float] = None  # also cap each layer's rank at this fraction of its dense MACs (None = off)
    phase_epochs: tuple[int, int, int] = (1, 2, 1)  # full-rank+ortho, +sparsity, finetune after pruning
    lr: float = 1e-3


@dataclass(frozen=True)
class LRAConfig:
    """Lee et al. 2019: occasional low-rank distortion every S_D steps."""

    period: int = 200               # S_D
    form: str = "tucker2"           # tucker2 | svd (2-D SVD of the im2col matrix)


@dataclass(frozen=True)
class ELRTConfig:
    """Sui et al. 2024: Tucker-2 training with double soft orthogonality."""

    rho: float = 1e-3
    from_scratch: bool = False


@dataclass(frozen=True)
class FinetuneConfig:
    """Stage 02: recover accuracy of the factorized model."""

    method: str = "kd"              # kd | svd_training | lra | elrt | none
    epochs: int = 4
    # When the finetuned model's validation accuracy still misses benchmark.max_drop, up to this many more KD
    # epochs (one more cosine cycle from lr) before the rank search backs off to a milder level; 0 = off.
    # Measured: resnet20 on shapes at 4.56x fewer MACs is 2.8-4.5 points under the original after 4 epochs and
    # 0.6 after 15 (README "Finetune extension"); easy data (digits) meets the budget in 4 and never extends.
    extra_epochs: int = 12
    batch_size: int = 32
    lr: float = 0.01
    optimizer: str = "sgd"          # sgd | adam
    weight_decay: float = 1e-4
    temperature: float = 4.0
    alpha: float = 0.9              # weight of the distillation term (1 - alpha on cross-entropy)
    feature_weight: float = 0.0     # feature distillation at block outputs (0 = off)
    nproc: int = 1                  # >1: torchrun data-parallel processes
    svd: SVDTrainingConfig = field(default_factory=SVDTrainingConfig)
    lra: LRAConfig = field(default_factory=LRAConfig)
    elrt: ELRTConfig = field(default_factory=ELRTConfig)


@dataclass(frozen=True)
class QuantizeConfig:
    """Stage 03: ONNX Runtime static QDQ quantization with real calibration images."""

    activation_type: str = "uint8"  # uint8 | int8
    weight_type: str = "int8"       # int8 | uint8
    per_channel: bool = True
    calibrate_method: str = "minmax"  # minmax | entropy | percentile
    calib_size: int = 256
    max_drop: float = 0.01          # accuracy guard: fall back layers to float beyond this drop
    # "2".."8", or "auto": per-layer widths; with size_budget (average bits/weight) from measured sensitivities,
    # without one the smallest coded size whose top-1 classes stay within weight_drop of the int8 model's (val +
    # training images)
    weight_bits: str = "auto"
    size_budget: Optional[float] = None
    weight_drop: float = 0.005      # "auto" without size_budget: share of top-1 classes that may change vs int8
    fit_seconds: float = 120.0      # "auto": time for per-(layer, width) probes; beyond it one probe per layer
    weight_grid: str = "auto"       # layer: one step per weight tensor | octave: layer step / 2**k per channel |
    #                                 channel: one step per output channel | auto: layer (channel under QAT)
    qat_epochs: int = 0             # >0: quantization-aware KD finetune at weight_bits before export (fixed bits only)
    qat_lr: float = 1e-3
    reduce_range: str = "auto"      # auto|true|false: 7-bit weights (auto: x86 host without VNNI, U8S8 saturates)


@dataclass(frozen=True)
class EntropyConfig:
    """Stage 04: pack quantized weights into the coded container."""

    coder: str = "auto"             # raw|zstd|huffman|rans|rans16|rans16ch|planes|auto (pipeline/entropy/coders.py)
    zstd_level: int = 9      # zstd-19 encodes at only 2-4 MB/s; huffman or rANS usually wins under coder=auto anyway


@dataclass(frozen=True)
class ExportConfig:
    """Stage 05: fp32 ONNX (opset 17, BN folded, simplified), parity checks, ORT format for mobile."""

    opset: int = 17
    simplify: bool = True
    atol: float = 1e-4
    rtol: float = 1e-3
    mobile: bool = True
    #: which device the .ort files are made for (exporters.ort_mobile.MOBILE_TARGETS): nnapi | coreml | cpu
    mobile_target: str = "nnapi"
    #: ship graphs with (x - mean) / std inside them, so an app feeds raw [0, 1] pixels
    bake_preprocessing: bool = False


@dataclass(frozen=True)
class BenchmarkConfig:
    """Stage 06: latency, storage, energy and accuracy of every variant, and the report."""

    target: str = "cpu"
    threads: int = 1
    samples: int = 60
    warmup: int = 10
    batch: int = 1
    html: bool = True
    # fidelity gate: largest accuracy drop (fraction; top-1/step agreement floors 1 - max_drop) a shipped variant may
    # have against the original; dense/sequence/embedding outputs also meet the fixed floors of pipeline.heads.gate
    max_drop: float = 0.01


@dataclass(frozen=True)
class PipelineConfig:
    """The whole run. ``model``/``data``/``weights`` select inputs; one section per stage."""

    model: str = "vgg11"
    data: str = "digits"
    weights: Optional[str] = None
    seed: int = 0
    device: str = "cpu"
    artifacts: str = "artifacts"
    # what the model's outputs are: auto (detected from their shapes) | classify | dense | sequence | embedding
    task: str = "auto"
    # seconds allowed for loading user model code (the module import, the factory call) and for its first forward,
    # each; 0 = no limit. How long is not what is computed, so no stage key includes it.
    user_code_timeout_s: float = 120.0
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    factorize: FactorizeConfig = field(default_factory=FactorizeConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    entropy: EntropyConfig = field(default_factory=EntropyConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)


# Range checks: dotted key -> (predicate, description)
_RANGES: dict[str, tuple[Any, str]] = {
    "seed": (lambda v: v >= 0, ">= 0"),
    "device": (lambda v: v == "cpu" or v.startswith("cuda"), "'cpu' or 'cuda[:N]'"),
    "user_code_timeout_s": (lambda v: 0 <= v <= 86400, "in [0, 86400] seconds (0 = no limit)"),
    "dataset.train_size": (lambda v: v is None or v >= 1, ">= 1 (or null: the dataset's default)"),
    "dataset.val_size": (lambda v: v is None or v >= 1, ">= 1 (or null: the dataset's default)"),
    "dataset.test_size": (lambda v: v is None or v >= 1, ">= 1 (or null: the dataset's default)"),
    "dataset.input_size": (lambda v: v is None or (4 <= min(v) and max(v) <= 1024), "[H, W] with 4..1024 per side"),
    "task": (lambda v: v in ("auto", "classify", "dense", "sequence", "embedding"),
             "auto|classify|dense|sequence|embedding"),
    "baseline.epochs": (lambda v: 0 <= v <= 10000, "in [0, 10000]"),
    "baseline.batch_size": (lambda v: v >= 1, ">= 1"),
    "baseline.lr": (lambda v: v > 0, "> 0"),
    "finetune.svd.prune_macs": (lambda v: v is None or 0 < v <= 1, "in (0, 1]"),
    "baseline.warmup_epochs": (lambda v: 0 <= v <= 10000, "in [0, 10000]"),
    "baseline.onnx_form": (lambda v: v in ("auto", "graph"), "'auto' or 'graph'"),
    # below 1% of the energy nearly every layer drops to rank 1 (a run that is certain to fail the gate)
    "factorize.energy": (lambda v: 0.01 <= v <= 1, "in [0.01, 1] (useful range about 0.3-0.99; 0.6 is the default)"),
    "factorize.ratio": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "factorize.erank_factor": (lambda v: v > 0, "> 0"),
    "factorize.align": (lambda v: 0 <= v <= 256, "in [0, 256] (0 = the target's channel block)"),
    "factorize.min_channels": (lambda v: v >= 1, ">= 1"),
    "factorize.min_mac_saving": (lambda v: -1 < v < 1, "in (-1, 1)"),
    "factorize.search.probe_images": (lambda v: v >= 32, ">= 32"),
    "factorize.search.probe_drop": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "factorize.search.min_gain": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "factorize.search.backoffs": (lambda v: 0 <= v <= 5, "in [0, 5]"),
    "factorize.search.levels": (lambda v: len(v) >= 1 and all(0 < f <= 1 for f in v), "a list of MAC fractions in (0, 1]"),
    "factorize.search.fallback_level": (lambda v: 0 <= v <= 1, "a MAC fraction in (0, 1], or 0 for none"),
    "factorize.budget.macs": (lambda v: v is None or 0 < v <= 1, "in (0, 1]"),
    "factorize.budget.params": (lambda v: v is None or 0 < v <= 1, "in (0, 1]"),
    "factorize.budget.latency": (lambda v: v is None or 0 < v <= 1, "in (0, 1]"),
    "finetune.epochs": (lambda v: 0 <= v <= 10000, "in [0, 10000]"),
    "finetune.extra_epochs": (lambda v: 0 <= v <= 10000, "in [0, 10000]"),
    "finetune.batch_size": (lambda v: v >= 1, ">= 1"),
    "finetune.lr": (lambda v: v > 0, "> 0"),
    "finetune.alpha": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "finetune.temperature": (lambda v: v > 0, "> 0"),
    "finetune.nproc": (lambda v: 1 <= v <= 64, "in [1, 64]"),
    "finetune.optimizer": (lambda v: v in ("sgd", "adam"), "'sgd' or 'adam'"),
    "finetune.svd.form": (lambda v: v in ("channel", "spatial"), "'channel' or 'spatial'"),
    "finetune.svd.sparsity": (lambda v: v in ("l1", "hoyer", "hoyer_square", "erank"), "l1|hoyer|hoyer_square|erank"),
    "finetune.svd.prune_energy": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "finetune.lra.period": (lambda v: v >= 1, ">= 1"),
    "finetune.lra.form": (lambda v: v in ("tucker2", "svd"), "'tucker2' or 'svd'"),
    "quantize.activation_type": (lambda v: v in ("uint8", "int8"), "'uint8' or 'int8'"),
    "quantize.weight_type": (lambda v: v in ("uint8", "int8"), "'uint8' or 'int8'"),
    "quantize.calibrate_method": (lambda v: v in ("minmax", "entropy", "percentile"), "minmax|entropy|percentile"),
    "quantize.calib_size": (lambda v: v >= 1, ">= 1"),
    "quantize.max_drop": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "quantize.weight_drop": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "quantize.fit_seconds": (lambda v: v >= 0, ">= 0"),
    "quantize.weight_grid": (lambda v: v in ("auto", "layer", "octave", "channel"),
                             "'auto', 'layer', 'octave' or 'channel'"),
    "quantize.qat_epochs": (lambda v: 0 <= v <= 1000, "in [0, 1000]"),
    "quantize.qat_lr": (lambda v: v > 0, "> 0"),
    "quantize.weight_bits": (lambda v: v == "auto" or v in tuple("2345678"), "'2'..'8' (one digit) or 'auto'"),
    "quantize.reduce_range": (lambda v: v in ("auto", "true", "false"), "'auto', 'true' or 'false'"),
    "entropy.zstd_level": (lambda v: 1 <= v <= 22, "in [1, 22]"),
    "export.opset": (lambda v: 11 <= v <= 18, "in [11, 18]"),
    # the same names as exporters.ort_mobile.MOBILE_TARGETS (the runner checks against that table too)
    "export.mobile_target": (lambda v: v in ("nnapi", "coreml", "cpu"), "'nnapi', 'coreml' or 'cpu'"),
    "benchmark.threads": (lambda v: 1 <= v <= 256, "in [1, 256]"),
    "benchmark.samples": (lambda v: v >= 1, ">= 1"),
    "benchmark.warmup": (lambda v: v >= 0, ">= 0"),
    "benchmark.batch": (lambda v: v >= 1, ">= 1"),
    "benchmark.max_drop": (lambda v: 0 <= v <= 1, "in [0, 1]"),
}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert ``value`` to the annotated type ``tp``; raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"config key {key!r}: invalid value {value!r}")
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[T, ...]: any length
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"config key {key!r}: expected a list of values, got {value!r}")
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"config key {key!r}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}: expected a mapping of {_type_name(tp)} fields, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key!r}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 (PyYAML) reads "1e-3" as a string: accept every spelling Python's float() does, finite only.
            try:
                value = float(value.strip().replace("_", ""))
            except ValueError:
                raise ConfigError(f"config key {key!r}: expected a number, got {value!r}") from None
            if not math.isfinite(value):
                raise ConfigError(f"config key {key!r}: expected a finite number, got {value!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. weight_bits=4 from YAML
        if not isinstance(value, str):
            raise ConfigError(f"config key {key!r}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"config key {key!r}: unsupported type {tp}")  # pragma: no cover


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a (possibly partial) mapping, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + u for u in unknown)}; "
            f"valid keys here: {', '.join(prefix + k for k in sorted(known))}"
        )
    kwargs = {}
    for name, value in data.items():
        key = prefix + name
        v = _coerce(value, hints[name], key)
        if key in _RANGES and not is_dataclass(hints[name]):
            pred, desc = _RANGES[key]
            try:
                ok = pred(v)
            except Exception:
                ok = False
            if not ok:
                raise ConfigError(f"config key {key!r}: value {v!r} out of range, must be {desc}")
        kwargs[name] = v
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (tuples become lists, JSON-ready)."""

    def conv(v: Any) -> Any:
        if is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in fields(v)}
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


def _parse_scalar(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def _set_dotted(d: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"--set {dotted!r}: empty key segment; use e.g. --set factorize.method=tucker2")
    cur = d
    for p in parts[:-1]:
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {dotted!r}: {p!r} is a value, not a section")
        cur = nxt
    cur[parts[-1]] = value


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml) or TOML (.toml) config file into a dict, with clear errors."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"config file {str(p)!r} is a directory, not a file; pass the path of a YAML or TOML "
                         f"file inside it to --config")
    if not p.is_file():
        raise InputError(f"config file {str(p)!r} does not exist; pass an existing YAML or TOML file to --config")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {str(p)!r} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
                          f"{e.start}); save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    except OSError as e:
        raise InputError(f"config file {str(p)!r} cannot be read ({e.strerror}); check its permissions") from None
    if p.suffix == ".toml":
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {str(p)!r} is not valid TOML: {e}") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must contain a mapping of sections, got {type(data).__name__}")
    return data


def build_config(
    file: str | Path | None = None,
    overrides: list[str] | None = None,
    **top: Any,
) -> PipelineConfig:
    """Compose the run's config: defaults < file < top-level keyword args (model/data/...) < ``--set`` overrides.

    Args:
        file: optional YAML/TOML path.
        overrides: ``["section.key=value", ...]``; values parsed as YAML scalars.
        **top: top-level fields given by CLI flags (None values are ignored).
    """
    data: dict[str, Any] = load_file(file) if file else {}
    for k, v in top.items():
        if v is not None:
            data[k] = v
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set factorize.method=channel_svd")
        k, v = item.split("=", 1)
        _set_dotted(data, k.strip(), _parse_scalar(v.strip()))
    return resolve_align(_check_cross_fields(from_dict(PipelineConfig, data)))


def _check_cross_fields(cfg: PipelineConfig) -> PipelineConfig:
    """Rules that tie two settings together, checked before any work starts."""
    q = cfg.quantize
    if q.qat_epochs > 0 and not (str(q.weight_bits).isdigit() and 2 <= int(q.weight_bits) <= 7):
        raise ConfigError(f"quantize.qat_epochs={q.qat_epochs} trains for a fixed low-bit grid but "
                          f"quantize.weight_bits is {q.weight_bits!r}; set quantize.weight_bits to 2..7, or "
                          f"quantize.qat_epochs=0")
    if q.qat_epochs > 0 and q.weight_grid in ("layer", "octave"):
        # the fake quantizer trains per-channel grids (pipeline/quantize/qat.py); another grid would undo them
        raise ConfigError(f"quantize.weight_grid={q.weight_grid} with quantize.qat_epochs={q.qat_epochs}: the "
                          f"quantization-aware finetune trains one step per output channel; set "
                          f"quantize.weight_grid=channel (or auto)")
    return cfg


def resolve_align(cfg: PipelineConfig) -> PipelineConfig:
    """Replace ``factorize.align = 0`` by the channel block of ``benchmark.target``'s device profile.

    Resolved here, not at use, so the stage keys, the manifest and the report carry the concrete value: the same
    config on an AVX2 and an AVX-512 machine gives different (and correctly different) factorizations.
    """
    if cfg.factorize.align != 0:
        return cfg
    from benchmarks.targets import TARGETS

    block = int(TARGETS.get(cfg.benchmark.target).profile.channel_block)
    return dataclasses.replace(cfg, factorize=dataclasses.replace(cfg.factorize, align=block))


def replace(cfg: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` re-exported for frozen configs."""
    return dataclasses.replace(cfg, **changes)
