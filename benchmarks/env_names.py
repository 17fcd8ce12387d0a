"""The environment store's names lookup, which every submit naming an environment makes on the event loop
in the distributed mode (``SharedEnvironments.resolve``), as do ``inspect`` and ``by_digest``.

Imports one small image under ``--names`` names into a scratch store, then times, alternately in
``--rounds`` rounds of ``--lookups`` each:

- ``names()``: the store's lookup (``environments.names_file``: one ``stat`` while the file is unchanged);
- baseline: reading and parsing ``names.json`` each time, as the lookup did before.

Prints the median per lookup of each and their ratio. Everything is under a temporary directory.

    sudo .venv/bin/python benchmarks/env_names.py [--names 50] [--lookups 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.oci_images import busybox_base, write_oci_layout

from sandlot.environments.store import EnvironmentStore


def _per_lookup_us(lookup: Callable[[], object], count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        lookup()
    return (time.perf_counter() - start) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--names", type=int, default=50)
    parser.add_argument("--lookups", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sandlot-bench-names-") as tmp:
        image = Path(tmp) / "image"
        write_oci_layout(image, [busybox_base()])
        store = EnvironmentStore(Path(tmp) / "state")
        for i in range(args.names):
            store.import_image(f"env-{i:04d}", image)
        path = store.root / "names.json"

        def reparse() -> object:
            return json.loads(path.read_text())

        assert store.names() == reparse()
        cached: list[float] = []
        baseline: list[float] = []
        for _ in range(args.rounds):
            cached.append(_per_lookup_us(store.names, args.lookups))
            baseline.append(_per_lookup_us(reparse, args.lookups))
        print(f"names.json: {args.names} names, {path.stat().st_size} bytes; {args.rounds} rounds x {args.lookups}")
        print(f"store.names() (stat while unchanged): median {statistics.median(cached):.2f} us per lookup")
        print(f"read + parse each time (before):      median {statistics.median(baseline):.2f} us per lookup")
        print(f"ratio before / now: {statistics.median(baseline) / statistics.median(cached):.1f}")


if __name__ == "__main__":
    main()
