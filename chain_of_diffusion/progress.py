"""Progress bars for long work: on the local main process only, and only when its output is a terminal
(a log file or a pipe gets no carriage-return spam; tqdm decides with ``disable=None``)."""

from __future__ import annotations

from tqdm.auto import tqdm


def progress_bar(accelerator, total: int, desc: str, initial: int = 0) -> tqdm:
    disable = True if not accelerator.is_local_main_process else None
    return tqdm(total=total, initial=initial, desc=desc, disable=disable, dynamic_ncols=True, leave=False)
