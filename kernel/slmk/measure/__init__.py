"""Measuring a deployment: speed and memory (bench), the validation checklist
(validate), precisions side by side (compare), and quality gates (deploy).

Everything here talks to a model through the runtime-neutral ``ChatSession``
protocol, plus optional capabilities a runtime may offer (``encode``, ``score``,
``context_length``), checked with ``hasattr``. Imports stay light: psutil, json,
statistics; matplotlib only inside the plot functions.
"""
