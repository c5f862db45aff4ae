"""The run's log in the forms people read: metrics.jsonl, TensorBoard event files, a W&B run, a PNG.

Every record goes to ``metrics.jsonl`` (training.metrics.MetricsLog); its numbers also go to TensorBoard
(``<out>/tensorboard``, when the ``tensorboard`` package is installed; otherwise one line says so) and,
with ``wandb`` = "offline" or "online", to a Weights & Biases run (offline needs no network: ``wandb sync``
uploads it later). Nested values such as ``heldout_acc: {task: acc}`` become ``heldout_acc/task``.
Closing the log draws ``training_curves.png``: training loss (raw and smoothed), learning rate, held-out
loss and held-out accuracy, one panel each.
"""
from __future__ import annotations

from pathlib import Path

from common.io import atomic_write, read_objects
from training.metrics import MetricsLog

SKIPPED = ("step", "active_blocks")  # not scalars to chart


def scalars(record: dict, prefix: str = "") -> dict[str, float]:
    """The numeric fields of a record, nested dicts flattened to ``outer/inner``."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in SKIPPED and not prefix:
            continue
        if isinstance(value, dict):
            out.update(scalars(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[prefix + key] = float(value)
    return out


class RunLog:
    """MetricsLog + TensorBoard + optional W&B, all fed by `write(step=..., **fields)`."""

    def __init__(self, out: Path, enabled: bool = True, wandb: str | None = None, config: dict | None = None,
                 say=print, resume_step: int | None = None):  # fmt: skip
        self.out, self.enabled = out, enabled
        self.jsonl = MetricsLog(out / "metrics.jsonl", enabled=enabled, resume_step=resume_step)
        self.tensorboard = self.wandb = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            # resumed: events past the checkpoint (logged before a kill) are purged, as metrics.jsonl is cut back
            self.tensorboard = SummaryWriter(str(out / "tensorboard"),
                                             purge_step=None if resume_step is None else resume_step + 1)
        except ImportError:
            say("note: the tensorboard package is not installed, so no TensorBoard event files (pip install tensorboard)")
        if wandb is not None:
            try:
                import wandb as wandb_lib
            except ImportError:
                raise ValueError(f"--wandb {wandb}: the wandb package is not installed (pip install wandb)") from None
            self.wandb = wandb_lib.init(project="owlore", dir=str(out), mode=wandb, config=config or {},
                                        name=out.name)  # fmt: skip

    def write(self, **record) -> None:
        self.jsonl.write(**record)
        if not self.enabled:
            return
        step, values = int(record.get("step", 0)), scalars(record)
        if self.tensorboard is not None:
            for key, value in values.items():
                self.tensorboard.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def close(self) -> None:
        self.jsonl.close()
        if not self.enabled:
            return
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()
        records = read_objects(self.out / "metrics.jsonl")
        if records:
            plot_curves(self.out / "training_curves.png", records)


def curves(records: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """Series ``name -> (steps, values)`` of every scalar in the records (a record may lack some)."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for record in records:
        for key, value in scalars(record).items():
            steps, values = series.setdefault(key, ([], []))
            steps.append(int(record.get("step", 0)))
            values.append(value)
    return series


PANELS = (  # (title, does a series belong here); one y-axis each
    ("training loss", lambda key: key == "loss"),
    ("learning rate", lambda key: key == "lr"),
    ("held-out loss", lambda key: key.startswith("heldout_") and not key.startswith("heldout_acc")),
    ("held-out accuracy", lambda key: key.startswith("heldout_acc")),
)


def smoothed(values: list[float], weight: float = 0.9) -> list[float]:
    """Debiased exponential moving average (TensorBoard's smoothing): s_t = m_t / (1 - weight^t),
    m_t = weight m_(t-1) + (1 - weight) v_t."""
    out, m = [], 0.0
    for t, v in enumerate(values, start=1):
        m = weight * m + (1 - weight) * v
        out.append(m / (1 - weight**t))
    return out


def plot_curves(path: Path, records: list[dict]) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """Training loss (raw, faint, and smoothed), learning rate, held-out loss and held-out accuracy over
    steps, one panel each, as one PNG; returns what it drew: panel title -> series name -> (steps, values)."""
    series = curves(records)
    panels = [(title, [k for k in series if belongs(k)]) for title, belongs in PANELS]
    panels = [(title, keys) for title, keys in panels if keys]
    if not panels:
        raise ValueError("no loss, lr or held-out values to plot")
    from matplotlib.figure import Figure  # (a second to import: only when a run ends and draws)

    fig = Figure(figsize=(7.5, 2.2 * len(panels) + 0.4), layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    drawn: dict[str, dict] = {}
    for ax, (title, keys) in zip(axes, panels):
        for key in keys:
            steps, values = drawn.setdefault(title, {})[key] = series[key]
            marker = "o-" if len(steps) < 20 else "-"
            if key == "loss" and len(steps) > 2:
                ax.plot(steps, values, "-", lw=0.8, alpha=0.3, color="C0", label="raw")
                ax.plot(steps, smoothed(values), "-", color="C0", label="smoothed (EMA 0.9)")
            else:
                ax.plot(steps, values, marker, ms=3, label=key.removeprefix("heldout_acc/"))
        ax.set_title(title, fontsize="medium", loc="left")
        if len(keys) > 1 or keys == ["loss"]:
            ax.legend(fontsize="small", ncol=2 if len(keys) > 4 else 1, loc="center left", bbox_to_anchor=(1.01, 0.5))
    axes[-1].set_xlabel("step")
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    return drawn
