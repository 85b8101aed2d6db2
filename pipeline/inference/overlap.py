"""Three-stage pipelining of a batch: while the network runs on case i, background threads load and
preprocess case i+1 and invert and write case i-1 (nnU-Net's predictor does the same with process
pools: preprocessing workers ahead of the network, an export pool behind it).

Threads suffice: reading (zlib, ITK), resampling and inversion (torch, numpy) release the GIL for
their heavy parts, and threads share the networks and the transform chain without copying them.
:func:`overlapped` knows nothing about scans; :func:`pipeline.inference.batch.predict_cases` gives it
the per-case steps it also runs one after the other when ``infer.workers`` is 0.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["resolve_workers", "overlapped"]

T = TypeVar("T")
_END = object()


def resolve_workers(workers: int, cores: int | None = None) -> int:
    """The number of background threads per side for ``infer.workers`` (-1: chosen by core count).

    Auto is one thread per 4 cores, at least 1 and at most 4; 0 (serial) on a single core, where a
    thread can only take turns with the network. Even on 2 cores one thread hides most of the
    reading, resampling, inversion and gzip writing, which run on one core while the network's
    convolutions wait on memory (``bench/infer_cohort.py``, numbers in README.md). More threads
    cost memory: each writer thread may hold one full-size case being inverted.

    Args:
        workers: ``infer.workers`` (checked >= -1 when the config is loaded).
        cores: the usable cores; None: this process's CPU affinity.
    """
    if workers >= 0:
        return workers
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 0 if cores < 2 else max(1, min(4, cores // 4))


def overlapped(
    items: Iterable[T],
    load: Callable[[T], Any],
    run: Callable[[T, Any], Any],
    finish: Callable[[T, Any], Any],
    workers: int,
) -> Iterator[Any]:
    """``finish(item, run(item, load(item)))`` for every item, in item order, with ``load`` running
    up to ``workers`` items ahead and ``finish`` up to ``workers`` items behind ``run``.

    ``run`` always runs in the calling thread, one item at a time (the network: it has the cores and
    the GPU to itself). An item whose ``load`` or ``run`` returns None skips the later steps that
    need it: ``run`` is not called and ``finish`` gets None (the steps record their own failures).
    An exception that escapes a step stops the batch: queued steps are cancelled, running ones are
    waited for, and the exception is raised here, in item order (as a serial loop would).

    Args:
        items: the cases.
        load, run, finish: the three steps.
        workers: threads on each side (>= 1).

    Yields:
        ``finish``'s result for each item, in item order.
    """
    source = iter(items)
    loads: deque[tuple[T, Future]] = deque()
    writes: deque[Future] = deque()
    with (
        ThreadPoolExecutor(workers, thread_name_prefix="infer-load") as loader,
        ThreadPoolExecutor(workers, thread_name_prefix="infer-write") as writer,
    ):

        def fill() -> None:  # keep `workers` loads queued or running
            while len(loads) < workers and (item := next(source, _END)) is not _END:
                loads.append((item, loader.submit(load, item)))

        try:
            fill()
            while loads:
                item, loaded = loads.popleft()
                fill()  # the next case loads while this one is in the network
                x = loaded.result()
                x = None if x is None else run(item, x)
                writes.append(writer.submit(finish, item, x))
                while writes and (len(writes) > workers or writes[0].done()):
                    yield writes.popleft().result()  # bounded: finished cases do not pile up in memory
            while writes:
                yield writes.popleft().result()
        except BaseException:
            for future in [f for _, f in loads] + list(writes):
                future.cancel()
            raise
