"""A tqdm progress bar over bytes, fed by the pipeline's ``progress(name, nbytes)`` callback."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from tqdm import tqdm


@contextmanager
def progress_bar(disable: bool = False) -> Iterator[Callable[[str, int], None]]:
    """Yield a callback; the bar shows tensors done, bytes done and throughput (stderr)."""
    bar = tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc="converting", disable=disable,
               dynamic_ncols=True, leave=False)
    tensors = 0

    def update(name: str, nbytes: int) -> None:
        nonlocal tensors
        tensors += 1
        bar.update(nbytes)
        bar.set_postfix_str(f"{tensors} tensors", refresh=False)

    try:
        yield update
    finally:
        bar.close()
