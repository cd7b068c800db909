"""Writing deployable files: ONNX export (:mod:`~exporters.onnx`), ORT-vs-torch parity (:mod:`~exporters.validate`),
ORT format and mobile usability (:mod:`~exporters.ort_mobile`)."""
