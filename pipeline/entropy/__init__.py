"""Entropy coding of model weights: coders (raw, zstd, rANS), the LRDC container, and its fuzzer."""
