"""Validation of command-line values the CLI receives (seed, device, input and output files); each raises
ConfigError/InputError."""
from __future__ import annotations

import re
from pathlib import Path

from pipeline.errors import ConfigError, InputError

_DEVICE = re.compile(r"^(cpu|cuda)(:(\d+))?$")


def check_seed(seed: object) -> int:
    """Return ``seed`` as an int in [0, 2**63 - 1] (what torch.manual_seed and numpy accept); refuse anything else."""
    try:
        value = int(str(seed), 0) if isinstance(seed, str) else int(seed)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"--seed {seed!r} is not an integer; pass a whole number, e.g. --seed 0") from None
    if not 0 <= value < 2 ** 63:
        raise ConfigError(f"--seed {seed!r} is outside the accepted range 0 .. 2**63-1 "
                          f"({2 ** 63 - 1}); pass a smaller non-negative integer")
    return value


def check_device(device: str) -> str:
    """Return a valid torch device string (``cpu``, ``cuda``, ``cuda:N``) that this build and machine can use."""
    m = _DEVICE.match(str(device).strip())
    if m is None:
        raise ConfigError(f"--device {device!r} is not a device name; use 'cpu', 'cuda' or 'cuda:N' with N a GPU index")
    if m.group(1) == "cpu":
        if m.group(2):
            raise ConfigError(f"--device {device!r}: the CPU takes no index; use --device cpu")
        return "cpu"
    import torch  # heavy: only when a device is named, so `list`/`unpack` start fast

    if not torch.cuda.is_available():
        raise ConfigError(f"--device {device!r}: this torch build has no usable CUDA device "
                          f"(torch {torch.__version__}, cuda {torch.version.cuda}); use --device cpu")
    if m.group(3) is not None and int(m.group(3)) >= torch.cuda.device_count():
        raise ConfigError(f"--device {device!r}: only {torch.cuda.device_count()} CUDA device(s) visible; "
                          f"pass an index below that")
    return m.group(0)


def check_output_file(path: str | Path, flag: str = "-o") -> Path:
    """Return ``path`` as a Path if a file can be written there: not a directory, parent folder exists."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise InputError(f"{flag} {str(path)!r} is a directory; pass a file path inside it, "
                         f"e.g. {flag} {str(p / 'model.onnx')!r}")
    if not p.parent.is_dir():
        raise InputError(f"{flag} {str(path)!r}: folder {str(p.parent)!r} does not exist; create it first")
    return p


def check_input_file(path: str | Path, what: str, fix: str) -> Path:
    """Return ``path`` as a Path if it is an existing file; a directory is named as one, not as "does not exist".

    Args:
        path: the path the user gave.
        what: what it should be, e.g. ``"weights file"``.
        fix: what to pass instead, e.g. ``"pass an existing .safetensors/.pt file to --weights"``.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise InputError(f"{what} {str(path)!r} is a directory, not a file; {fix} (a file inside it?)")
    if not p.is_file():
        raise InputError(f"{what} {str(path)!r} does not exist; {fix}")
    return p
