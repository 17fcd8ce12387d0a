"""Task ids: 128 random bits as hex, unique however many threads ask at once."""

from __future__ import annotations

import re
import sys
import threading

from sandlot.requests import new_task_id

IDS_PER_THREAD = 2000
THREADS = 8


def test_ids_are_32_hex_digits_and_never_repeat_across_threads() -> None:
    found: list[list[str]] = [[] for _ in range(THREADS)]

    def take(into: list[str]) -> None:
        into.extend(new_task_id() for _ in range(IDS_PER_THREAD))

    threads = [threading.Thread(target=take, args=(found[i],)) for i in range(THREADS)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch between any two bytecodes, so a race would show
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    ids = [task_id for batch in found for task_id in batch]
    assert len(ids) == IDS_PER_THREAD * THREADS
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", task_id) for task_id in ids)
