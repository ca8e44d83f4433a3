"""A tqdm progress bar over bytes, fed by the pipeline's ``progress(name, nbytes)`` callback."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from tqdm import tqdm


class _Bar(tqdm):
    """tqdm without its monitor thread (it only tunes refresh intervals here, and a thread that
    outlives a conversion is one thing an interrupted run must not leave behind)."""

    monitor_interval = 0


@contextmanager
def progress_bar(disable: bool = False, mininterval: float = 0.1) -> Iterator[Callable[[str, int], None]]:
    """Yield a callback; the bar (stderr) shows bytes done of the total, throughput, time left and
    tensors done of the total. The pipeline announces the totals through ``callback.start``."""
    bar = _Bar(unit="B", unit_scale=True, unit_divisor=1024, desc="converting", disable=disable,
               dynamic_ncols=True, leave=False, mininterval=mininterval)
    tensors = 0
    total_tensors: int | None = None

    def start(count: int, nbytes: int) -> None:
        nonlocal total_tensors
        total_tensors = count
        bar.reset(total=nbytes)

    def update(name: str, nbytes: int) -> None:
        nonlocal tensors
        tensors += 1
        of = f"/{total_tensors}" if total_tensors is not None else ""
        bar.set_postfix_str(f"{tensors}{of} tensors", refresh=False)
        bar.update(nbytes)

    update.start = start  # type: ignore[attr-defined]
    try:
        yield update
    finally:
        bar.close()
