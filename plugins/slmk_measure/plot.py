"""Charts for bench and compare (matplotlib, imported only here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slmk.api import UsageError
from slmk.api.files import atomic_file


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UsageError(
            "--plot needs matplotlib, which is not installed", hint="pip install matplotlib (or drop --plot)"
        ) from None
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path = Path(path).expanduser()
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    return path


def require_matplotlib() -> None:
    """Fail before any work is done when the plot could not be drawn at the end."""
    _pyplot()


def plot_bench(report: dict[str, Any], path: Path, title: str = "") -> Path:
    """Decode tokens/s and first-token latency against prompt length."""
    plt = _pyplot()
    rows = report["lengths"]
    x = [r["prompt_tokens"] for r in rows]
    fig, (speed, latency) = plt.subplots(1, 2, figsize=(10, 4))
    speed.plot(x, [r["decode_tokens_per_s"]["median"] for r in rows], "o-", label="median")
    speed.plot(x, [r["decode_tokens_per_s"]["p90"] for r in rows], "x--", alpha=0.6, label="p90")
    speed.set(xlabel="prompt tokens", ylabel="decode tokens/s", title="decode speed")
    latency.plot(x, [1000 * r["time_to_first_token_s"]["median"] for r in rows], "o-", label="median")
    latency.plot(x, [1000 * r["time_to_first_token_s"]["p90"] for r in rows], "x--", alpha=0.6, label="p90")
    latency.set(xlabel="prompt tokens", ylabel="ms", title="time to first token")
    for axis in (speed, latency):
        axis.set_xscale("log")
        axis.set_xticks(x, [str(n) for n in x])  # label the measured lengths, not log decades
        axis.minorticks_off()
        axis.grid(True, alpha=0.3)
        axis.legend()
    if title:
        fig.suptitle(title, y=1.02)
    path = _save(fig, path)
    plt.close(fig)
    return path


def plot_compare(report: dict[str, Any], path: Path) -> Path:
    """Size, decode speed, perplexity and accuracy per precision."""
    plt = _pyplot()
    rows = report["precisions"]
    names = [r["precision"] for r in rows]
    panels = [
        ("size (MB)", [r["size_bytes"] / 2**20 for r in rows]),
        ("decode tokens/s", [r["decode_tps"] or 0 for r in rows]),
        ("perplexity (held-out)", [r["ppl"] or 0 for r in rows]),
        ("domain accuracy", [r["accuracy"] or 0 for r in rows]),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    for axis, (label, values) in zip(axes, panels):
        axis.bar(names, values, color="#4c72b0")
        axis.set_title(label)
        axis.grid(True, axis="y", alpha=0.3)
    model = Path(report["model"])
    fig.suptitle(
        f"{model.parent.name}/{model.name} on {report['execution_provider']}: "
        f"recommended {report['recommendation']['precision']}",
        y=1.04,
    )
    path = _save(fig, path)
    plt.close(fig)
    return path
