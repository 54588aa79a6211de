"""ONNX graph generation: inference, training step and DP-SGD graphs from standard ops only.

This subpackage imports ``onnx`` and runs off-device (``fedbeat model build``); devices load the
files it writes with plain ``onnxruntime``.
"""
