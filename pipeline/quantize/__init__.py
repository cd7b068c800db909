"""int8 QDQ quantization with ONNX Runtime (ort_static) and low-bit storage weights (weights)."""
