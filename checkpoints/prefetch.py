"""Overlapping the two halves of a conversion: computing tensors in a background thread while the
caller writes the previous one."""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator


def prefetch(items: Iterable, depth: int = 1) -> Iterator:
    """Iterate ``items`` in a background thread, computing at most ``depth`` items ahead.

    A conversion is two kinds of work: computing tensors (transforms, casts, the nonfinite check:
    torch kernels) and writing them (``write(2)``: a kernel copy). Both release the GIL, so a
    producer thread and the writing thread overlap them on two cores. The producer starts an item
    only when the consumer has taken the previous one, so at most ``depth + 1`` items are alive
    (with ``depth=1``: the one being written and the one being computed). An exception in the
    producer is re-raised, as itself, to the consumer where it would have occurred; closing the
    returned generator (or dropping it) stops the producer."""
    channel: queue.Queue = queue.Queue()
    slots = threading.Semaphore(max(1, depth))
    stop = threading.Event()

    def acquire() -> bool:
        while not stop.is_set():
            if slots.acquire(timeout=0.05):
                return True
        return False

    def produce() -> None:
        iterator = iter(items)
        try:
            while acquire():
                try:
                    item = next(iterator)
                except StopIteration:
                    channel.put((False, None))
                    return
                channel.put((True, item))
                del item
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            channel.put((False, exc))

    def consume() -> Iterator:
        thread = threading.Thread(target=produce, name="convcheck-prefetch", daemon=True)
        _PRODUCERS[thread] = stop
        thread.start()  # on the first next(): a generator never started never needs stopping
        try:
            while True:
                ok, value = channel.get()
                slots.release()  # the producer may start the next item now
                if ok:
                    yield value
                    del value
                elif value is None:
                    return
                else:
                    raise value
        finally:
            stop.set()
            slots.release()
            thread.join()
            _PRODUCERS.pop(thread, None)

    return consume()


_PRODUCERS: dict[threading.Thread, threading.Event] = {}  # prefetch threads alive, and their stop signal


def stop_producers() -> None:
    """Stop and join every prefetch thread still running (the CLI calls it on its way out, after an
    interrupt or an error: a producer thread left inside a torch kernel while the interpreter
    exits aborts the process, ``terminate called without an active exception``)."""
    for thread, stop in list(_PRODUCERS.items()):
        stop.set()
    for thread in list(_PRODUCERS):
        if thread.ident is not None:  # an interrupt between registering and start() leaves one never started
            thread.join()
        _PRODUCERS.pop(thread, None)
