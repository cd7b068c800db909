"""Error hierarchy: every user-facing failure is a PipelineError with a message naming the input, the problem and the fix."""
from __future__ import annotations


class PipelineError(Exception):
    """Base class of every error the pipeline raises on purpose (the CLI prints it and exits non-zero)."""

    exit_code = 2


class ConfigError(PipelineError):
    """A configuration value, key or name is invalid (unknown registry name, wrong type, out of range)."""


class InputError(PipelineError):
    """A user-supplied file or folder is missing, unreadable or malformed (checkpoint, ONNX, dataset)."""


class ValidationError(PipelineError):
    """A stage's own output failed its check (parity, round trip, reconstruction)."""


class NumericalError(PipelineError):
    """NaN/Inf found in weights or activations; the message names the layer."""


class ContainerError(InputError):
    """The entropy-coded weight container is corrupt, truncated or of an unknown version."""


class LockError(PipelineError):
    """Another run holds the artifacts folder's lock."""


class UserCodeError(InputError):
    """User-supplied code (a model file, its factory or its forward) failed, exited or timed out.

    The message names the user function, the step (import, factory call, first forward) and the original error in
    one line. ``SystemExit`` raised by user code is mapped to this class, so the CLI exits with ``exit_code`` (2),
    never with the user's own code.
    """
