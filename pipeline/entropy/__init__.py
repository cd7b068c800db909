"""Entropy coding of model weights: the coders (:mod:`.coders`, one module per coder), the LRDC container
(:mod:`.container`), the packer's stream plan (:mod:`.grouping`), the compiled rANS loops (:mod:`.rans_kernels`), and
the fuzzer (:mod:`.fuzz`, with its amplification cases in :mod:`.amplify`)."""
