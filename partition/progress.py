"""A progress bar for work done in a few long steps (planning): tqdm on stderr, drawn only on a
terminal and only once the work has lasted over a second, refreshed twice a second so that the
elapsed time moves during a long step.

    with StepBar("planning cache_aware", ["placing", "MRAM offsets", "validating"]) as bar:
        place(); bar.next()
        assign(); bar.next()
        check(); bar.next()
"""

from __future__ import annotations

import sys
import threading
from typing import Sequence


class StepBar:
    def __init__(self, what: str, steps: Sequence[str], delay_s: float = 1.0):
        from tqdm import tqdm

        self._steps = list(steps)
        self._what = what
        self._bar = tqdm(total=len(self._steps), desc=self._label(0), unit="step", delay=delay_s, disable=None,
                         file=sys.stderr, leave=False)
        self._stop = threading.Event()
        self._ticker = None
        if not self._bar.disable:
            self._ticker = threading.Thread(target=self._tick, name="updlrm-step-bar", daemon=True)
            self._ticker.start()

    def _label(self, i: int) -> str:
        return f"{self._what}: {self._steps[i]}" if i < len(self._steps) else self._what

    def _tick(self) -> None:
        while not self._stop.wait(0.5):
            self._bar.refresh()

    def next(self) -> None:
        """The current step is done."""
        self._bar.update(1)
        self._bar.set_description_str(self._label(self._bar.n), refresh=False)

    def __enter__(self) -> "StepBar":
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        self._bar.close()
