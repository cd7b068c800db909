"""The measurement library: latency (:mod:`~benchmarks.latency`), accuracy, shipped bytes (:mod:`~benchmarks.storage`),
MACs / energy / roofline from the ONNX graph (:mod:`~benchmarks.energy`), targets and device profiles
(:mod:`~benchmarks.targets`, the one ``TARGETS`` registry) and the run report (:mod:`benchmarks.report`).

Not to be confused with the ``benchmark`` pipeline stage, which uses this library to measure one run (its config
section is ``BenchmarkConfig``), or with ``lowrank-deploy bench`` (:mod:`pipeline.suites`), the comparison suites.
"""
