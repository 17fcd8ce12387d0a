"""Fair waiting across tenants: per-tenant FIFOs served one tenant at a time, in rotation.

Theory of operation
-------------------
Both places where work waits for a scarce thing use it: the embedded broker's
queue (tasks waiting for a worker) and the box pool (leases waiting for a box).
Each tenant has its own FIFO; ``pop`` takes the oldest item of the tenant at the
front of the rotation and, if that tenant still has items, sends it to the back.
So one tenant's burst of a thousand items waits behind the others' one each,
and items of one tenant keep their order. A tenant enters the rotation with its
first item and leaves it with its last, so the rotation never holds an empty
queue.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class TenantRotation(Generic[T]):
    """Items waiting per tenant, handed out round-robin across tenants and FIFO within one."""

    def __init__(self) -> None:
        self._queues: dict[str, collections.deque[T]] = {}
        self._order: collections.deque[str] = collections.deque()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[T]:
        """Every waiting item (tenant by tenant), for a shutdown that must answer them all."""
        for queue in self._queues.values():
            yield from queue

    def push(self, tenant: str, item: T) -> None:
        """Add item at the back of its tenant's queue; a new tenant joins the rotation at its back."""
        queue = self._queues.get(tenant)
        if queue is None:
            queue = self._queues[tenant] = collections.deque()
            self._order.append(tenant)
        queue.append(item)
        self._count += 1

    def pop(self) -> T:
        """The oldest item of the next tenant in rotation; IndexError if nothing waits."""
        tenant = self._order.popleft()  # IndexError when empty, as deque.popleft
        queue = self._queues[tenant]
        item = queue.popleft()
        if queue:
            self._order.append(tenant)
        else:
            del self._queues[tenant]
        self._count -= 1
        return item

    def remove(self, tenant: str, item: T) -> bool:
        """Take item out of its tenant's queue (it gave up waiting); False if it was not there."""
        queue = self._queues.get(tenant)
        if queue is None:
            return False
        try:
            queue.remove(item)
        except ValueError:
            return False
        if not queue:
            del self._queues[tenant]
            self._order.remove(tenant)
        self._count -= 1
        return True

    def clear(self) -> None:
        self._queues.clear()
        self._order.clear()
        self._count = 0
