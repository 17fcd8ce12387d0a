"""``sandlot run hello.py`` as a whole process, side by side with the bare interpreter running the same file.

Judges and scripts call the CLI once per test, so the whole process counts:
interpreter start, sandlot's imports, the cold box and the program. hyperfine
(Debian package ``hyperfine``) runs both commands back to back in one session;
this prints their mean wall time and CPU time (user+system, which a loaded
machine disturbs less) and the ratios, then the import cost of ``sandlot.cli``
alone (``python -X importtime``, the median of several fresh interpreters).

sandlot's bytecode is compiled first: an installed package has its ``.pyc``
files, while an editable install under ``PYTHONDONTWRITEBYTECODE=1`` would
otherwise compile every module from source on every call (~20 ms here).

    sudo .venv/bin/python benchmarks/cli_startup.py [--runs 50]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import sandlot as sandlot_package

HELLO = "print('hello')\n"
_IMPORT_SAMPLES = 15


def _hyperfine(commands: list[str], runs: int) -> list[tuple[float, float]]:
    """(mean wall seconds, mean CPU seconds) of each command, measured by hyperfine in one session."""
    with tempfile.NamedTemporaryFile(suffix=".json") as export:
        subprocess.run(
            [
                "hyperfine",
                "--warmup",
                "3",
                "--runs",
                str(runs),
                "--style",
                "none",
                "--export-json",
                export.name,
                *commands,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        data = json.loads(Path(export.name).read_text())
    return [(float(r["mean"]), float(r["user"]) + float(r["system"])) for r in data["results"]]


def _import_ms(python: str, module: str) -> float:
    """Median cumulative import time of ``module`` in a fresh interpreter (-X importtime), in ms."""
    samples = []
    for _ in range(_IMPORT_SAMPLES):
        proc = subprocess.run(
            [python, "-X", "importtime", "-c", f"import {module}"], capture_output=True, text=True, check=True
        )
        line = next(line for line in proc.stderr.splitlines() if line.rstrip().endswith(f"| {module}"))
        samples.append(int(line.split("|")[1]) / 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    if shutil.which("hyperfine") is None:
        sys.exit("cli_startup.py: needs hyperfine (apt-get install hyperfine; scripts/setup.sh installs it)")
    sandlot = Path(sys.executable).with_name("sandlot")
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(sandlot_package.__file__).parent)], check=True)
    with tempfile.TemporaryDirectory(prefix="sandlot-bench-", dir="/var/tmp") as tmp:
        os.chmod(tmp, 0o755)
        hello = Path(tmp, "hello.py")
        hello.write_text(HELLO)
        bare_cmd, sandlot_cmd = f"/usr/bin/python3 {hello}", f"{sandlot} run {hello}"
        bare, boxed = _hyperfine([bare_cmd, sandlot_cmd], args.runs)
    print(f"{'command':<28} {'wall (mean)':>12} {'CPU (mean)':>12}")
    for name, (wall, cpu) in (("python3 hello.py (bare)", bare), ("sandlot run hello.py", boxed)):
        print(f"{name:<28} {wall * 1000:>9.1f} ms {cpu * 1000:>9.1f} ms")
    extra_ms = (boxed[0] - bare[0]) * 1000
    print(f"ratio: wall {boxed[0] / bare[0]:.2f}x (+{extra_ms:.1f} ms), CPU {boxed[1] / bare[1]:.2f}x")
    print(f"import sandlot.cli: {_import_ms(sys.executable, 'sandlot.cli'):.1f} ms (median of {_IMPORT_SAMPLES})")


if __name__ == "__main__":
    main()
