"""The source model as a runtime: a Hugging Face folder run by transformers (torch, CPU).

What the user trained is the truth slmk's builds are checked against: ``slmk convert``
verifies each build against this runtime, and ``compare``, ``deploy --quality-gate``,
``sweep`` and ``validate`` measure builds relative to it. Module level stays light: torch
and transformers are imported when a model is loaded.
"""

from __future__ import annotations

from slmk.api import FORMAT_HF, Runtime, hookimpl

from . import session


@hookimpl
def slmk_runtimes():
    yield Runtime(
        name="transformers",
        description="the source model: a Hugging Face folder run by transformers (torch, CPU, no remote code)",
        load=session.load,
        can_load=session.can_load,
        input_format=FORMAT_HF,
        priority=-10,  # never the default for builds: it loads source folders only
    )
