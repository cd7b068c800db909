"""Writing deployable files: ONNX export (:mod:`~exporters.onnx`), ORT-vs-torch parity (:mod:`~exporters.validate`),
preprocessing/label metadata and ``model.json`` (:mod:`~exporters.metadata`), normalisation baked into the graph
(:mod:`~exporters.preprocess`), reproducible ORT-format conversion (:mod:`~exporters.ort_convert`) and the mobile
deliverables per target with the usability checker on the shipped graphs (:mod:`~exporters.ort_mobile`)."""
