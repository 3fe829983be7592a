"""Request coalescing: calls that reach one actor together are searched as one batch, split back per caller.

Data-parallel trainers call retrieval at nearly the same moment every step. Searched one by one (or side by
side on shared cores), W calls cost about W searches; an exact search reads the shard's vectors once per
batch, so W calls stacked into one batch cost about one search. One thread owns the searching:

    caller threads (Ray's actor threads)      searcher thread
    check own input (errors stay with it) ->  take the first waiting call, then the calls that arrive
    enqueue, wait for own answer              within `window_s` of it, and every call already waiting
                                              one search per distinct k over the stacked queries
    return own rows                       <-  cut each caller's rows out of the batch's result

The wait ends early once as many callers have arrived as the largest of the recent batches: a lone caller
(one trainer per replica) is searched at once instead of paying the window on every call, while W trainers
calling together are gathered as soon as all W are there. The first batch waits the whole window (nothing
is known yet).

A caller gets exactly what a solo call returns: rows of a batch do not influence each other (each question's
top-k is its own), and callers are only stacked with callers asking the same k of the same searcher (an actor
holding two index versions during a roll-forward has one searcher per version). A failure of the shared
search is raised to every caller of that batch.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from pipeline.retrieval.result import RetrievalResult


@dataclass
class _Call:
    search: Callable[[np.ndarray, int], RetrievalResult]
    queries: np.ndarray
    k: int
    arrived: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    result: RetrievalResult | None = None
    error: BaseException | None = None


class Coalescer:
    """Serialises searches `search(queries float32[B, d], k) -> RetrievalResult` through one thread, batching
    callers of the same search function."""

    def __init__(self, window_s: float):
        self._window_s = window_s
        self._waiting: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self.searches = 0  # batches searched (calls served = the actor's own count)
        self.largest_batch = 0
        self._recent_sizes: deque[int] = deque(maxlen=16)
        threading.Thread(target=self._serve, name="retrieval-coalescer", daemon=True).start()

    def search(self, search: Callable[[np.ndarray, int], RetrievalResult], queries: np.ndarray,
               k: int) -> RetrievalResult:
        """What `search(queries, k)` returns, possibly computed in one batch with other callers' queries."""
        call = _Call(search, queries, k)
        self._waiting.put(call)
        call.done.wait()
        if call.error is not None:
            raise call.error
        return call.result

    def _serve(self) -> None:
        while True:
            batch = self._collect(self._waiting.get())
            self.searches += 1
            self.largest_batch = max(self.largest_batch, len(batch))
            alike = defaultdict(list)
            for call in batch:
                alike[(call.search, call.k)].append(call)
            for (search, k), calls in alike.items():
                self._answer(search, calls, k)

    def _collect(self, first: _Call) -> list[_Call]:
        """`first`, the calls arriving until `window_s` after it (or until as many as recent batches held),
        and every call already waiting."""
        batch = [first]
        expected = max(self._recent_sizes, default=None)
        deadline = first.arrived + self._window_s
        while expected is None or len(batch) < expected:
            try:
                batch.append(self._waiting.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        while True:
            try:
                batch.append(self._waiting.get_nowait())
            except queue.Empty:
                break
        self._recent_sizes.append(len(batch))
        return batch

    def _answer(self, search: Callable[[np.ndarray, int], RetrievalResult], calls: list[_Call], k: int) -> None:
        try:
            if len(calls) == 1:
                calls[0].result = search(calls[0].queries, k)
            else:
                whole = search(np.concatenate([c.queries for c in calls]), k)
                start = 0
                for call in calls:
                    call.result = whole.rows(start, start + len(call.queries))
                    start += len(call.queries)
        except BaseException as e:  # noqa: BLE001 (delivered to the callers, who raise it)
            for call in calls:
                call.error = e
        for call in calls:
            call.done.set()

