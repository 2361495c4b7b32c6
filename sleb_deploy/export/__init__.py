"""ONNX export of Hugging Face decoders with KV-cache I/O, validation against PyTorch, and an ORT greedy generator.

The modules here import onnx/onnxruntime lazily so that the package imports without them.
"""
