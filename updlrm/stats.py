"""Per-batch phase timings and counters, each figure labelled with where it came from.

``source`` is one of:

* ``"measured"``      - host wall clock around code that really ran here (pack, merge, MLP, CPU lookups)
* ``"emulator-wall"`` - host wall clock of the emulator doing a DPU's job; NOT a DPU latency
* ``"modeled"``       - the UPMEM timing model's estimate for real hardware
* ``"hardware"``      - measured on real UPMEM DPUs (SDK build, backend=hw)
* ``"simulator"``     - measured in the UPMEM functional simulator (SDK build, backend=simulator)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np

SOURCES = ("measured", "emulator-wall", "modeled", "hardware", "simulator")

#: Phase names in pipeline order.
PHASES = ("pack", "cpu_to_dpu", "launch", "kernel", "dpu_to_cpu", "merge", "embed", "mlp")


@dataclass
class Phase:
    name: str  # one of PHASES
    seconds: float
    source: str  # one of SOURCES
    detail: dict = field(default_factory=dict)  # the formula's inputs, byte counts, ...

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"Phase source must be one of {SOURCES}, got {self.source!r}")


@dataclass
class BatchStats:
    """What one batch cost, phase by phase, plus raw counters (e.g. the emulator's)."""

    phases: list[Phase] = field(default_factory=list)
    counters: dict = field(default_factory=dict)

    def add(self, name: str, seconds: float, source: str, **detail) -> Phase:
        phase = Phase(name, float(seconds), source, dict(detail))
        self.phases.append(phase)
        return phase

    def get(self, name: str, source: str | None = None) -> Phase | None:
        for phase in self.phases:
            if phase.name == name and (source is None or phase.source == source):
                return phase
        return None

    def to_dict(self) -> dict:
        """The phases and counters as plain Python data that ``json.dumps`` accepts: NumPy arrays
        (e.g. the PIM backend's per-DPU counters) and torch tensors become (nested) lists, NumPy
        scalars become int / float / bool, tuples become lists, dict keys become strings."""
        return {
            "phases": [
                {"name": p.name, "seconds": p.seconds, "source": p.source, "detail": to_plain(p.detail)}
                for p in self.phases
            ],
            "counters": to_plain(self.counters),
        }


def to_plain(value):
    """``value`` with every NumPy array / scalar and torch tensor replaced, recursively, by plain
    Python lists and numbers (see :meth:`BatchStats.to_dict`); other leaves are returned as they are."""
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(to_plain(k)): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        # nested lists of Python scalars for any numeric dtype and shape; object arrays recurse
        return to_plain(value.tolist()) if value.dtype == object else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    torch = sys.modules.get("torch")  # only when torch is already loaded: no import cost here
    if torch is not None and isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    return value
