"""What the memory simulation (training/memory.py) reports: the peak of live bytes by category, each phase's
peak, and the table train.py prints. Apart from the simulation so that reading a cached report or printing
one costs no import of torch's fake-tensor and compiler stack."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

GIB = 2**30
CATEGORIES = ("parameters", "gradients", "optimizer", "activations", "temporaries")


@dataclass
class Peak:
    """Live bytes at one moment, by category; `phase` and `where` say when (step, pass, module, op)."""

    total: int = 0
    parameters: int = 0
    gradients: int = 0
    optimizer: int = 0
    activations: int = 0
    temporaries: int = 0
    phase: str = ""
    where: str = ""


@dataclass
class MemoryReport:
    peak: Peak
    phases: dict[str, Peak] = field(default_factory=dict)  # the peak within each phase, in order
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"peak": asdict(self.peak), "phases": {k: asdict(v) for k, v in self.phases.items()},
                "seconds": self.seconds}


def format_report(report: MemoryReport, measured_peak: int | None = None) -> str:
    """The peak and each phase's peak, GiB by category."""
    head = f"  {'phase':<38}" + "".join(f"{c:>12}" for c in CATEGORIES) + f"{'total':>10}  where"
    lines = [head]
    for name, p in report.phases.items():
        cells = "".join(f"{getattr(p, c) / GIB:12.3f}" for c in CATEGORIES)
        lines.append(f"  {name:<38}{cells}{p.total / GIB:10.3f}  {p.where}")
    lines.append(f"  peak (simulated): {report.peak.total / GIB:.3f} GiB in {report.peak.phase} ({report.peak.where})")
    if measured_peak is not None:
        lines.append(f"  measured peak: {measured_peak / GIB:.3f} GiB")
    return "\n".join(lines)
