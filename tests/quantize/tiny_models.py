"""Re-export of :mod:`tests.helpers.onnx_models` for the quantize tests that import it from here."""
from tests.helpers.onnx_models import export, images, run, tiny_net

__all__ = ["export", "images", "run", "tiny_net"]
