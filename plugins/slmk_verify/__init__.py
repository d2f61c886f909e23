"""The build check ``slmk convert`` runs: each build against its source model, which is the truth.

The source (the Hugging Face folder) runs through whichever runtime loads Hugging Face
folders (``slmk_transformers``), the build through its own runtime; fp32/fp16/bf16 builds
must give the source's greedy tokens, int8/int4 builds are measured (see ``check``). A
plugin of its own, not part of the transformers runtime: it drives two runtimes through
the registry and owns a convert policy (refuse, cache, memory), and without a source
runtime it still says why a build was not verified.
"""

from __future__ import annotations

from slmk.api import BuildCheck, hookimpl

from . import check


@hookimpl
def slmk_build_checks():
    yield BuildCheck(
        name="source",
        description="runs the source model and the build on a few chat prompts and compares their logits",
        start=check.start,
    )
