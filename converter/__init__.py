"""converter: passes over ONNX graphs, pluggable backends, golden checks.

The public surface is small on purpose: load a model, run a pipeline of passes,
emit an artifact through a backend, check it against a golden case.
"""

__version__ = "0.1.0"
