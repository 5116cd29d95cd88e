"""One small least-recently-used cache, thread-safe, for everything the server keeps bounded
(uploads, decoded samples, feature visualizations, traces), and single-flight work.

>>> cache: LRUCache[str, int] = LRUCache(2)
>>> cache.put("a", 1); cache.put("b", 2); _ = cache.get("a"); cache.put("c", 3)
>>> sorted(cache.keys())  # "b" was the least recently used
['a', 'c']
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LRUCache(Generic[K, V]):
    """At most ``capacity`` entries; putting one more drops the least recently used."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"an LRU cache holds at least one entry; got capacity {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """The value (now the most recently used), or ``None`` when absent."""
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items

    def keys(self) -> list[K]:
        with self._lock:
            return list(self._items)

    def __len__(self) -> int:
        return len(self._items)


class SingleFlight(Generic[K, V]):
    """At most one computation per key at a time: callers asking for a key whose work is in
    flight get that work's future instead of starting it again (a page's trace request while
    the server's start-up computes the same trace waits for it rather than running it twice).

    The key is forgotten once its work ends, result or error: a failure is not kept, and the
    caller's own cache (an :class:`LRUCache`) holds results.

    >>> from concurrent.futures import Future
    >>> flights: SingleFlight[str, int] = SingleFlight()
    >>> started: list[Future[int]] = []
    >>> def start() -> Future[int]:
    ...     started.append(Future())
    ...     return started[-1]
    >>> a, b = flights.run("k", start), flights.run("k", start)
    >>> a is b, len(started), "k" in flights
    (True, 1, True)
    >>> a.set_result(7); "k" in flights, b.result()
    (False, 7)
    """

    def __init__(self) -> None:
        self._flights: dict[K, Future[V]] = {}
        self._lock = threading.RLock()  # a future already done runs its callback at once

    def run(self, key: K, start: Callable[[], Future[V]]) -> Future[V]:
        """The future of ``key``'s work in flight, or of the work ``start`` begins now (an
        exception from ``start``, e.g. a full queue, leaves nothing registered)."""
        with self._lock:
            flight = self._flights.get(key)
            if flight is not None:
                return flight
            flight = start()
            self._flights[key] = flight
        flight.add_done_callback(lambda done: self._land(key, done))
        return flight

    def do(self, key: K, fn: Callable[[], V]) -> V:
        """``fn()`` run in this thread, or, when another thread is running ``key``'s work, the
        value (or exception) of that work."""
        with self._lock:
            flight = self._flights.get(key)
            owner = flight is None
            if flight is None:
                flight = self._flights[key] = Future()
        if not owner:
            return flight.result()
        try:
            value = fn()
        except BaseException as e:
            self._land(key, flight)
            flight.set_exception(e)
            raise
        self._land(key, flight)
        flight.set_result(value)
        return value

    def _land(self, key: K, flight: Future[V]) -> None:
        with self._lock:
            if self._flights.get(key) is flight:
                del self._flights[key]

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._flights
