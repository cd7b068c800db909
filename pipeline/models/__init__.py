"""Model zoo and model loading: registered architectures, user ``file.py:factory`` models, checkpoint weights.

Public API (other subsystems code against exactly this):

* ``MODELS`` -- ``Registry`` of factories ``factory(num_classes: int = 10, in_channels: int = 3) -> nn.Module``.
* :func:`build_model` -- a registered name or ``path/to/file.py:factory``.
* :func:`load_weights` -- ``.safetensors`` or weights-only ``.pt``/``.pth`` into a built model, strictly checked.
* :func:`model_names` -- the registered names.
* :func:`load_onnx_model` -- a pretrained ``.onnx`` as a torch module, or as an ORT-run graph when the importer
  cannot convert it (the graph-level fallback).
* :func:`class_count_from_weights` -- the class count a checkpoint was trained for (unlabelled datasets).
"""
from __future__ import annotations

import hashlib
import pickle
import re
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from pipeline.errors import ConfigError, InputError
from pipeline.models.onnx import onnx_model_info, onnx_to_torch
from pipeline.models.sanity import check_checkpoint_sanity
from pipeline.models.user_code import call_factory, first_forward, import_user_file
from pipeline.models.zoo import MODELS
from pipeline.spec import FILE, ModelSpec
from pipeline.validate_args import check_input_file

__all__ = ["MODELS", "build_model", "class_count_from_weights", "load_onnx_model", "load_weights", "model_names",
           "onnx_model_info", "onnx_to_torch"]

# Longest key lists quoted in a mismatch message; the rest are counted, so the message stays readable.
_MAX_LISTED = 10


def model_names() -> list[str]:
    """Names of the registered zoo models, in registration order.

    Returns:
        The names ``build_model`` accepts without a file path.
    """
    return MODELS.names()


def _import_user_file(path: Path) -> Any:
    # A content-derived module name keeps two different files with the same name apart, and re-importing the same
    # file (e.g. in several stages) reuses one module object, so classes compare equal across calls.
    digest = hashlib.sha256(str(path.resolve()).encode() + path.read_bytes()).hexdigest()[:16]
    mod_name = f"lowrank_user_model_{digest}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    # Guarded: exceptions, sys.exit and endless loops at import become UserCodeError (see user_code).
    return import_user_file(path, mod_name)


def _call_factory(factory: Callable[..., Any], num_classes: int, in_channels: int, where: str) -> Any:
    return call_factory(factory, num_classes, in_channels, where)


def build_model(spec: str, num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    """Build a freshly initialised model.

    Args:
        spec: a registered zoo name (see :func:`model_names`), ``path/to/file.py:factory`` (the factory is called
            with ``num_classes``/``in_channels`` when its signature accepts them, else with no arguments), or
            ``path/to/model.onnx`` (imported with its own weights by :func:`onnx_to_torch`; the sizes are ignored).
        num_classes: classifier outputs (the dataset's class count).
        in_channels: input image channels.
        input_size: square input side the model will see (checked against the zoo model's minimum).

    Returns:
        The model (train mode, CPU, float32).

    Raises:
        ConfigError: unknown zoo name (the message lists the known ones), or invalid sizes.
        InputError: missing file, missing factory, import failure, or a factory that does not return a module.
    """
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"model spec {spec!r} is not a non-empty string; use one of {', '.join(MODELS.names())} "
                          f"or 'path/to/file.py:factory'")
    if int(num_classes) < 1:
        raise ConfigError(
            f"model {spec!r}: num_classes={num_classes} is invalid; the dataset must have labels or declare its "
            f"class count (e.g. a 'num_classes' or 'class_names' array in the npz)"
        )
    if int(in_channels) < 1 or int(input_size) < 1:
        raise ConfigError(f"model {spec!r}: in_channels={in_channels} and input_size={input_size} must be >= 1")
    parsed = ModelSpec.parse(spec)
    if parsed.is_onnx:
        # The graph fixes classes/channels; callers compare them with the dataset via onnx_model_info().
        return onnx_to_torch(Path(spec).expanduser())
    if parsed.kind == FILE:
        file_part, factory_name = parsed.path, parsed.factory
        path = check_input_file(file_part, "model file", "pass an existing .py file as 'path.py:factory'")
        module = _import_user_file(path)
        factory = getattr(module, factory_name, None)
        if factory is None or not callable(factory):
            public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
            raise InputError(
                f"model file {file_part!r} has no callable {factory_name!r}; callables defined there: "
                f"{', '.join(public) or '(none)'}"
            )
        where = f"{factory_name}() in {file_part!r}"
        model = _call_factory(factory, int(num_classes), int(in_channels), where)
        # One guarded forward on zeros catches a failing forward, a tuple output or an ignored num_classes here,
        # at the boundary, instead of as a traceback deep inside a stage.
        first_forward(model, torch.zeros(1, int(in_channels), int(input_size), int(input_size)), int(num_classes),
                      where)
        return model.train()
    factory = MODELS.get(spec)  # ConfigError listing the known names
    min_size = int(MODELS.meta(spec).get("min_input_size", 1))
    if int(input_size) < min_size:
        raise ConfigError(
            f"model {spec!r} needs inputs of at least {min_size}x{min_size} (got {input_size}); pick another model "
            f"or set the config key dataset.input_size to a larger [H, W]"
        )
    return factory(num_classes=int(num_classes), in_channels=int(in_channels))


def _short_reason(e: BaseException) -> str:
    # torch's message suggests weights_only=False or allow-listing globals as a "fix"; quote only what was refused.
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(e)).split())
    m = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\s+Please\b|$)", text)
    if m and m.group(1):
        return m.group(1)[:200]
    return text[:200] or type(e).__name__


def _read_checkpoint(path: Path) -> Any:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise InputError(f"weights file {str(path)!r} is not a valid safetensors file ({e}); re-export it") from e
    if suffix in (".pt", ".pth", ".ckpt", ".bin"):
        try:
            # weights_only=True: the restricted unpickler refuses arbitrary globals, so a malicious checkpoint cannot
            # run code. There is deliberately no fallback to weights_only=False.
            return torch.load(str(path), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError, TypeError,
                ImportError, IndexError, KeyError, OSError) as e:
            first = _short_reason(e)
            raise InputError(
                f"weights file {str(path)!r} could not be loaded as a weights-only checkpoint ({first}); it may "
                f"contain arbitrary Python objects, which are refused for safety. Convert it to safetensors in a "
                f"trusted environment: safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')"
            ) from e
    raise InputError(f"weights file {str(path)!r} has an unsupported extension {suffix!r}; use .safetensors, .pt or .pth")


def _extract_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping):
        raise InputError(f"weights file {str(path)!r} holds a {type(obj).__name__}, not a state_dict; save "
                         f"model.state_dict() (or {{'state_dict': ...}}) instead")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise InputError(f"weights file {str(path)!r} contains no tensors; save model.state_dict()")
    # DataParallel/DDP checkpoints prefix every key with "module.".
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f", ... ({len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else "")


def load_weights(model: nn.Module, path: str) -> None:
    """Load a checkpoint into ``model`` in place, strictly.

    Args:
        model: the built architecture (see :func:`build_model`).
        path: ``.safetensors`` or ``.pt``/``.pth`` (loaded with ``weights_only=True``); the file may hold a raw
            state_dict or ``{"state_dict": ...}``/``{"model": ...}``; a ``module.`` prefix is stripped.

    Raises:
        InputError: missing/unreadable file, a checkpoint that is not weights-only, or a checkpoint that does not
            match the architecture (missing keys, unexpected keys, shape mismatches are all named).
    """
    p = check_input_file(path, "weights file", "pass the path of a .safetensors or .pt file")
    state = _extract_state_dict(_read_checkpoint(p), p)
    expected = model.state_dict()
    # BatchNorm's num_batches_tracked counter is absent from many exported checkpoints and does not affect outputs.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys [{_listing(missing)}]")
        if unexpected:
            parts.append(f"unexpected keys [{_listing(unexpected)}]")
        if mismatched:
            parts.append(f"shape mismatches [{_listing(mismatched)}]")
        raise InputError(
            f"weights file {str(path)!r} does not match the model ({type(model).__name__}): {'; '.join(parts)}; "
            f"check that --model, the dataset's class count and input channels match the checkpoint"
        )
    bad_dtype = [k for k, v in state.items() if not (v.is_floating_point() or k.endswith("num_batches_tracked"))
                 and expected[k].is_floating_point()]
    if bad_dtype:
        raise InputError(f"weights file {str(path)!r}: tensors [{_listing(bad_dtype)}] are not floating point; "
                         f"save a float checkpoint")
    check_checkpoint_sanity(state, f"weights file {str(path)!r}")
    model.load_state_dict(state, strict=False)


def load_onnx_model(path: str, input_shape: tuple[int, int, int],
                    form: str = "auto") -> tuple[nn.Module, str | None]:
    """Load a pretrained ONNX model for the pipeline.

    The torch importer (:func:`onnx_to_torch`) is tried first, because only a torch module can be finetuned. When it
    cannot convert the file (operators outside its set, or an op configuration it cannot express) but the file is a
    valid standard-domain graph that ONNX Runtime runs, the graph itself is returned, wrapped in
    :class:`~pipeline.models.ort_graph.OrtGraphModel`: later stages then factorize the ONNX graph directly and skip
    finetuning.

    Args:
        path: the ``.onnx`` file.
        input_shape: ``(C, H, W)`` the dataset feeds (the fallback runs the graph once on zeros of it).
        form: ``auto`` (the importer first) or ``graph`` (the graph as is, without trying the importer:
            ``baseline.onnx_form``).

    Returns:
        ``(model, fallback_reason)``: ``fallback_reason`` is None for a converted torch module, else why the
        importer could not convert the file.

    Raises:
        InputError: invalid file, custom-op domains, or a graph neither the importer nor ONNX Runtime can run (the
            unsupported operators and ORT's message are named).
        NumericalError: NaN/Inf weights.
    """
    from pipeline.models.onnx import check_onnx_file, describe_ops, unsupported_ops
    from pipeline.models.ort_graph import load_graph_model

    proto = check_onnx_file(path)  # invalid files and custom domains stop here, never reaching a fallback
    gaps = unsupported_ops(proto)
    del proto
    if form == "graph":
        why = "baseline.onnx_form=graph: the graph is used as is (not imported to torch)"
    elif not gaps:
        try:
            return onnx_to_torch(Path(path).expanduser()), None
        except InputError as e:  # an op configuration the importer cannot express: ORT may still run it
            why = str(e)[:300]
    else:
        why = f"operators outside the importer's set: {describe_ops(gaps)}"
    return load_graph_model(Path(path).expanduser(), input_shape, why), why


def class_count_from_weights(spec: str, weights: str, in_channels: int, input_size: int) -> int:
    """The class count a checkpoint for ``spec`` was trained with (for datasets that declare none).

    The model is built for 1 and for 2 classes; a tensor whose shape changes with the class count (the classifier)
    is compared with the checkpoint's tensor of the same name, which gives the count. A factory that ignores
    ``num_classes`` is built once, loaded, and run on zeros: its output width is the count.

    Raises:
        InputError: the checkpoint cannot be read, or no class-dependent tensor is in it (the message says how to
            declare the count instead).
    """
    p = check_input_file(weights, "weights file", "pass the path of a .safetensors or .pt file")
    state = _extract_state_dict(_read_checkpoint(p), p)
    one = build_model(spec, 1, in_channels, input_size).state_dict()
    two = build_model(spec, 2, in_channels, input_size).state_dict()
    dependent = [k for k in one if k in two and tuple(one[k].shape) != tuple(two[k].shape)]
    for k in dependent:
        if k not in state or state[k].dim() != one[k].dim():
            continue
        for d, (a, b) in enumerate(zip(one[k].shape, two[k].shape)):
            step = int(b) - int(a)  # shape = base + step * num_classes along this axis
            if step <= 0:
                continue
            base = int(a) - step
            n, rem = divmod(int(state[k].shape[d]) - base, step)
            if rem == 0 and n >= 1:
                return int(n)
    if not dependent:  # the factory ignores num_classes: read the width of its output
        model = build_model(spec, 1, in_channels, input_size)
        load_weights(model, weights)
        with torch.no_grad():
            out = model.eval()(torch.zeros(1, in_channels, input_size, input_size))
        out = out[0] if isinstance(out, (tuple, list)) else out
        return int(out.shape[1])
    raise InputError(
        f"weights file {str(weights)!r}: the class count of model {spec!r} cannot be read from it (none of "
        f"{_listing(dependent)} matches); the dataset has no labels, so declare the count in it (e.g. a "
        f"'num_classes' array in the npz)"
    )
