"""Go's warm standard-library cache: shared by every box, written by none."""

from __future__ import annotations

from sandlot.config import Settings
from sandlot.engine import Engine
from sandlot.models import Status
from sandlot.sandbox import Box
from tests.conftest import run_job

_POISON = """
package main

import (
	"fmt"
	"os"
)

func main() {
	_ = os.WriteFile("/gocache/importcfg", []byte("packagefile fmt=/box/evil.a\\n"), 0o644)
	err := os.WriteFile("/gocache/00/poison", []byte("x"), 0o644)
	fmt.Println("subdir write:", err == nil)
}
"""

_HELLO = 'package main\n\nimport "fmt"\n\nfunc main() {\n\tfmt.Println("still fine")\n}\n'


async def test_boxes_write_only_their_own_copy_of_the_cache(engine: Engine, box: Box, settings: Settings) -> None:
    cache = settings.state_dir / "cache" / "go-build"
    run = await run_job(engine, box, "go", _POISON)
    assert run.result.status is Status.OK, run.result
    # Inside its own box a write into the cache's (world-writable) subdirectories succeeds...
    assert run.stdout.strip() == "subdir write: true"
    # ...but it lands in the box's copy-on-write layer: the shared cache on the host is untouched.
    importcfg = (cache / "importcfg").read_text()
    assert "evil" not in importcfg
    assert "packagefile fmt=" in importcfg
    assert not (cache / "00" / "poison").exists()


async def test_the_next_box_compiles_against_the_clean_cache(engine: Engine, sandbox: object, box: Box) -> None:
    first = await run_job(engine, box, "go", _POISON)
    assert first.result.status is Status.OK
    box.reset()  # what the pool does between runs without a session
    second = await run_job(engine, box, "go", _HELLO)
    assert second.result.status is Status.OK, second.result
    assert second.stdout.strip() == "still fine"
