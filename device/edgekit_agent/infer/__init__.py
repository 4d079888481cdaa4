"""Inference: the interpreter (:mod:`.runtime`, LiteRT or tflite-runtime), the preprocessing both sides share
(:mod:`.preprocess`), reading a classifier's output (:mod:`.classify`) and latency benchmarks (:mod:`.benchmark`)."""
