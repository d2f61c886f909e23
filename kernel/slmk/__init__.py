"""slmk: a small-language-model deployment kit built as a pluggy microkernel.

The kernel (this package) holds the contract (hookspecs and records), the plugin
manager, configuration and the CLI; the planner and the step runner are the built-in
plugin slmk_build. It never imports a plugin package
nor torch, transformers, onnx, onnxruntime or olive: plugins do the heavy work.
"""

__version__ = "0.1.0"

PROJECT = "slmk"

from .hookspecs import hookimpl  # noqa: E402  (the one import plugin authors need)

__all__ = ["PROJECT", "__version__", "hookimpl"]
