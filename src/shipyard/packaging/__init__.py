"""Packaging a registered version for another target: ONNX export with an equivalence gate."""
