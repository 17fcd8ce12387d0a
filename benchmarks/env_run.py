"""``sandlot run`` in an imported environment vs on the host, side by side (issue 15, first figures).

Imports the python image of ``tests/environments/test_environments_run.py`` (the host's python3, its
libraries and a stdlib slice) into the test store under a fresh name, then runs ``print(1)`` through the
CLI alternately on the host and with ``--env``, ``--runs`` times each per round, two rounds, and prints the
median and minimum wall time of each. The host's run uses a pre-launched jail; the environment's starts
cold (pre-launched jails are the host's root) and loads the environment store. Removes the name after.

    sudo .venv/bin/python benchmarks/env_run.py [--runs 15]
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.cli.test_cli import _SANDLOT, _env
from tests.conftest import TEST_STATE_DIR
from tests.environments.test_environments_run import _python_layer
from tests.oci_images import write_oci_layout

from sandlot.environments.store import EnvironmentStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=15)
    runs = parser.parse_args().runs
    store = EnvironmentStore(TEST_STATE_DIR)
    name = f"bench-py-{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory() as tmp:
        layout = Path(tmp) / "layout"
        write_oci_layout(layout, [_python_layer()], compression=["none"])
        store.import_image(name, layout)
        program = Path(tmp) / "main.py"
        program.write_text("print(1)")
        try:
            for label, extra in [("host", []), ("env", ["--env", name])] * 2:
                times = []
                for _ in range(runs):
                    started = time.perf_counter()
                    done = subprocess.run(
                        [str(_SANDLOT), "run", str(program), *extra], capture_output=True, env=_env(), check=True
                    )
                    times.append(time.perf_counter() - started)
                    assert done.stdout == b"1\n", done
                median, fastest = 1000 * statistics.median(times), 1000 * min(times)
                print(f"{label:<5} median {median:6.1f} ms   min {fastest:6.1f} ms   ({runs} runs)")
        finally:
            store.remove(name)


if __name__ == "__main__":
    main()
