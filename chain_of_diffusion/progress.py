"""Progress of long work, on the local main process only: a tqdm bar where the output is a terminal, and
where it is not (a log file, a pipe, CI) one plain line every 10% of the work, so a log gets tens of
lines instead of megabytes of carriage returns."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


class LineProgress:
    """The part of tqdm's interface the chain uses (update, set_postfix, close), as a line on ``stream``
    each time another ``every_percent`` of ``total`` is done."""

    def __init__(self, total: int, desc: str, initial: int = 0, every_percent: int = 10, stream=None):
        self.total, self.desc, self.n = max(int(total), 1), desc, initial
        self.every_percent = every_percent
        self.stream = stream if stream is not None else sys.stderr
        self._postfix = ""
        self._last = self._step(initial)  # a resumed run does not repeat the lines of work done before

    def _step(self, n: int) -> int:
        return min(100, 100 * n // self.total) // self.every_percent

    def update(self, n: int = 1) -> None:
        self.n += n
        step = self._step(self.n)
        if step > self._last:
            self._last = step
            extra = f" {self._postfix}" if self._postfix else ""
            print(f"{self.desc}: {step * self.every_percent}% ({self.n}/{self.total}){extra}", file=self.stream,
                  flush=True)

    def set_postfix(self, **values) -> None:
        self._postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        pass


def progress_bar(accelerator, total: int, desc: str, initial: int = 0) -> tqdm | LineProgress:
    if not accelerator.is_local_main_process:
        return tqdm(total=total, initial=initial, desc=desc, disable=True)
    if not sys.stderr.isatty():
        return LineProgress(total, desc, initial)
    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False)
