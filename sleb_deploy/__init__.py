"""sleb-deploy: prune Hugging Face decoders with SLEB, export them to ONNX and TensorRT, benchmark them."""

__version__ = "0.1.0"
