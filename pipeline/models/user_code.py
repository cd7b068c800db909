"""Run user-supplied model code at a guarded boundary: import, factory call and first forward.

Every failure becomes a :class:`UserCodeError` naming the user function, the step and the original error in one
line. ``SystemExit`` from user code is caught too (the CLI then exits with ``UserCodeError.exit_code``, 2, never the
user's own code). Each step is bounded by ``timeout_s`` (default :data:`DEFAULT_TIMEOUT_S`): in the main thread via
``SIGALRM``/``setitimer``; elsewhere (no signals there) the step runs in a daemon thread that is abandoned on timeout.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import inspect
import io
import signal
import sys
import threading
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator, TypeVar

import torch
from torch import nn

from pipeline.errors import UserCodeError
from pipeline.models.sanity import EmptyMapProbe, looks_like_size_error, size_error

DEFAULT_TIMEOUT_S = 120.0
T = TypeVar("T")

#: the limit of this run (the ``user_code_timeout_s`` config key, set by :func:`time_limit`); None = the default
_LIMIT: contextvars.ContextVar[float | None] = contextvars.ContextVar("lrd_user_code_timeout_s", default=None)


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Bound every guarded user-code step inside the block by ``seconds`` (0: no limit; None: the default).

    The runner wraps a run in it with the config's ``user_code_timeout_s``, so the stages that rebuild the model
    from the user's file get the same bound without passing it around.
    """
    token = _LIMIT.set(seconds)
    try:
        yield
    finally:
        _LIMIT.reset(token)


class _Timeout(BaseException):
    """Raised by the alarm handler; a BaseException so user ``except Exception`` blocks cannot swallow it."""


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


@contextlib.contextmanager
def _alarm(timeout_s: float) -> Iterator[None]:
    def handler(signum: int, frame: Any) -> None:
        raise _Timeout()
    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_guarded(fn: Callable[[], T], what: str, step: str, timeout_s: float | None = None) -> T:
    """Call ``fn()`` (user code); map any exception, ``SystemExit`` or timeout to :class:`UserCodeError`.

    Args:
        fn: the call into user code.
        what: the user function, e.g. ``"factory 'tiny.py:make'"``.
        step: the step, e.g. ``"import"``, ``"factory call"``, ``"first forward"``.
        timeout_s: seconds allowed; None means the run's ``user_code_timeout_s`` (:func:`time_limit`), else the
            module's ``DEFAULT_TIMEOUT_S`` (read at call time); 0 or less disables the bound.

    The bound uses ``SIGALRM``/``setitimer`` on the main thread (the user code is interrupted where it runs);
    elsewhere the call runs in a daemon thread that is abandoned on timeout. Without ``setitimer`` (Windows) the
    main thread takes that thread path too.
    """
    fix = f"fix {what} so that its {step} completes"
    if timeout_s is None:
        timeout_s = _LIMIT.get()
    if timeout_s is None:
        timeout_s = DEFAULT_TIMEOUT_S
    limit = timeout_s if timeout_s > 0 else None
    main = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    try:
        if limit is None:
            return fn()
        if main:
            with _alarm(limit):
                return fn()
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["v"] = fn()
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                box["e"] = e
        t = threading.Thread(target=target, daemon=True, name="lrd-user-code")
        t.start()
        t.join(limit)
        if t.is_alive():
            raise _Timeout()
        if "e" in box:
            raise box["e"]
        return box["v"]
    except _Timeout:
        raise UserCodeError(f"{what}: {step} did not finish within {limit:g} s (it may loop forever); {fix}, or "
                            f"raise the limit with the config key user_code_timeout_s (seconds, 0 = no limit), "
                            f"e.g. --set user_code_timeout_s=600") from None
    except SystemExit as e:
        raise UserCodeError(f"{what} called sys.exit({e.code!r}) during {step}; user code must return or raise, "
                            f"not exit; {fix}") from None
    except UserCodeError:
        raise
    except Exception as e:
        failed = {"import": "failed to import", "factory call": "failed"}.get(step, f"failed at the {step}")
        raise UserCodeError(f"{what} {failed}: {_one_line(e)}; {fix}") from e


def import_user_file(path: Path, mod_name: str, timeout_s: float | None = None) -> ModuleType:
    """Import ``path`` as module ``mod_name`` (registered in sys.modules only on success)."""
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise UserCodeError(f"model file {str(path)!r} cannot be imported as a Python module; pass a .py file")
    module = importlib.util.module_from_spec(spec)
    # Registered before executing so dataclasses/pickling inside the user file can find their own module.
    sys.modules[mod_name] = module
    try:
        run_guarded(lambda: spec.loader.exec_module(module), f"user model file {str(path)!r}", "import", timeout_s)
    except UserCodeError:
        sys.modules.pop(mod_name, None)
        raise
    return module


def call_factory(factory: Callable[..., Any], num_classes: int, in_channels: int, where: str,
                 timeout_s: float | None = None) -> nn.Module:
    """Call a user factory with the arguments its signature accepts; check it returns a usable nn.Module.

    ``where`` names the factory in messages, e.g. ``"make() in 'models/x.py'"``.
    """
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins/C callables without a signature: call with no arguments
        params = {}
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {n: v for n, v in (("num_classes", num_classes), ("in_channels", in_channels)) if var_kw or n in params}
    what = f"user factory {where}"
    model = run_guarded(lambda: factory(**kwargs), what, "factory call", timeout_s)
    if isinstance(model, tuple):
        raise UserCodeError(f"{what} returned a tuple of {len(model)} items, not a torch.nn.Module; return only "
                            f"the model")
    if not isinstance(model, nn.Module):
        raise UserCodeError(f"{what} returned {type(model).__name__}, not a torch.nn.Module; return the model")
    if not any(True for _ in model.parameters()):
        raise UserCodeError(f"{what} returned a {type(model).__name__} with no parameters; there is nothing to "
                            f"factorize or train: return a model with weights")
    return model


def first_forward(model: nn.Module, example: torch.Tensor, num_classes: int, where: str,
                  timeout_s: float | None = None) -> torch.Tensor:
    """Run the first forward of a user model on ``example`` (N, C, H, W); check the output is (N, num_classes)."""
    what = f"user forward of {where}"
    hw = (int(example.shape[-2]), int(example.shape[-1]))

    def fwd() -> Any:
        with torch.no_grad():
            return model.eval()(example)
    probe = EmptyMapProbe(model)  # a feature map the downsampling emptied is an input-size problem, said as such
    try:
        out = run_guarded(fwd, what, "first forward", timeout_s)
    except UserCodeError as e:
        if probe.empty is None and not (e.__cause__ is not None and looks_like_size_error(e.__cause__)):
            raise
        detail = (f"layer {probe.empty[0]!r} outputs shape {probe.empty[1]}" if probe.empty
                  else _one_line(e.__cause__))
        raise UserCodeError(str(size_error(what, hw, detail))) from None
    finally:
        probe.close()
    if probe.empty is not None:
        raise UserCodeError(str(size_error(what, hw, f"layer {probe.empty[0]!r} outputs shape {probe.empty[1]}")))
    if isinstance(out, (tuple, list)):
        raise UserCodeError(f"{what} returned a {type(out).__name__} of {len(out)} items; it must return one "
                            f"logits tensor of shape (N, num_classes)")
    if not isinstance(out, torch.Tensor):
        raise UserCodeError(f"{what} returned {type(out).__name__}; it must return a logits tensor")
    want = (example.shape[0], int(num_classes))
    if tuple(out.shape) != want:
        hint = (f"the factory ignores num_classes={num_classes}: build the classifier with it"
                if out.dim() == 2 and out.shape[0] == want[0] else "return logits of shape (N, num_classes)")
        raise UserCodeError(f"{what} returned shape {tuple(out.shape)}, expected {want}; {hint}")
    return out


def check_exportable(model: nn.Module, example: torch.Tensor, where: str = "model", opset: int = 17) -> None:
    """Try ``torch.onnx.export`` to memory; raise UserCodeError naming the unsupported op if it fails."""
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():  # the exporter's deprecation and tracer warnings are not the user's problem
            warnings.simplefilter("ignore")
            torch.onnx.export(model.eval(), (example,), buf, opset_version=opset, dynamo=False)
    except Exception as e:  # torch raises several types (UnsupportedOperatorError, RuntimeError, ...)
        msg = _one_line(e)
        raise UserCodeError(f"{where} cannot be exported to ONNX (opset {opset}): {msg}; replace that operator "
                            f"in the forward with ONNX-exportable ops") from e
