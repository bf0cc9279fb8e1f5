"""A progress bar: tqdm when it is installed, else a plain one-line bar on stderr (the SDK needs no tqdm)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """Counts work done towards `total` and shows rate and ETA.

    Args:
        total: Units of work; 0 when unknown.
        desc: Label in front of the bar.
        unit: Name of one unit ("img", "sample").
        disable: Show nothing (the counts are still kept).
        file: Where to draw (stderr).
    """

    def __init__(self, total: int = 0, desc: str = "", unit: str = "it", *, disable: bool = False,
                 file: TextIO | None = None):
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self.postfix = ""
        self.file = file or sys.stderr
        self.disable = disable
        self._start = time.monotonic()
        self._last = 0.0
        self._tqdm = None
        if not disable:
            try:
                from tqdm import tqdm
                self._tqdm = tqdm(total=total or None, desc=desc, unit=unit, file=self.file, dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, n: int = 1) -> None:
        self.moveto(self.n + n)

    def moveto(self, n: int, total: int | None = None) -> None:
        """Sets the count (and the total) absolutely, as server progress messages report them."""
        if total is not None and total != self.total:
            self.total = total
            if self._tqdm is not None:
                self._tqdm.total = total or None
        delta, self.n = n - self.n, n
        if self._tqdm is not None:
            self._tqdm.update(delta)  # rate-limited redraws (mininterval), unlike refresh()
        else:
            self._draw()

    def set_postfix(self, text: str) -> None:
        self.postfix = text
        if self._tqdm is not None:
            self._tqdm.set_postfix_str(text, refresh=False)
        else:
            self._draw(force=True)

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.disable or (not force and now - self._last < 0.2 and self.n != self.total):
            return
        self._last = now
        elapsed = now - self._start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        if self.total:
            frac = min(1.0, self.n / self.total)
            bar = "#" * int(frac * 24)
            eta = (self.total - self.n) / rate if rate > 0 else float("nan")
            line = f"{self.desc}: {frac:4.0%} |{bar:<24}| {self.n}/{self.total} [{elapsed:.0f}s<{eta:.0f}s, {rate:.1f} {self.unit}/s]"
        else:
            line = f"{self.desc}: {self.n} {self.unit} [{elapsed:.0f}s, {rate:.1f} {self.unit}/s]"
        if self.postfix:
            line += f" {self.postfix}"
        self.file.write("\r" + line[:150].ljust(80))
        self.file.flush()

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
        elif not self.disable:
            self._draw(force=True)
            self.file.write("\n")
            self.file.flush()

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
