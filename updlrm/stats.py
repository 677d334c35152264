"""Per-batch phase timings and counters, each figure labelled with where it came from.

``source`` is one of:

* ``"measured"``      - host wall clock around code that really ran here (pack, merge, MLP, CPU lookups)
* ``"emulator-wall"`` - host wall clock of the emulator doing a DPU's job; NOT a DPU latency
* ``"modeled"``       - the UPMEM timing model's estimate for real hardware
* ``"hardware"``      - measured on real UPMEM DPUs (SDK build, backend=hw)
* ``"simulator"``     - measured in the UPMEM functional simulator (SDK build, backend=simulator)
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
        return {
            "phases": [
                {"name": p.name, "seconds": p.seconds, "source": p.source, "detail": p.detail} for p in self.phases
            ],
            "counters": self.counters,
        }
