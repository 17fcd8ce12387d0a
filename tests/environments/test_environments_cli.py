"""``sandlot env ...`` run as the real console script against a private state dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from tests.oci_images import Entry, busybox_base, layer, write_docker_archive, write_oci_layout

_SANDLOT = Path(sys.executable).with_name("sandlot")


def _env(cmd: str, *args: str | Path, state: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDLOT_")}
    env["SANDLOT_STATE_DIR"] = str(state)
    return subprocess.run(
        [str(_SANDLOT), "env", cmd, *(str(a) for a in args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_import_list_inspect_rm_gc(tmp_path: Path) -> None:
    state = tmp_path / "state"
    digest = write_oci_layout(tmp_path / "layout", [busybox_base()])
    write_docker_archive(tmp_path / "other.tar", [busybox_base(), layer(Entry("etc/x", data=b"x"))])
    done = _env("import", "bb", tmp_path / "layout", state=state)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"imported: bb  {digest}  image  5 files")
    again = _env("import", "bb2", tmp_path / "layout", state=state)
    assert again.stdout.startswith("already in the store, named: bb2")
    assert _env("import", "other", tmp_path / "other.tar", state=state).returncode == 0
    listed = _env("list", "--json", state=state)
    assert [(e["name"], e["digest"] == digest) for e in json.loads(listed.stdout)] == [
        ("bb", True),
        ("bb2", True),
        ("other", False),
    ]
    assert [line.split()[0] for line in _env("list", state=state).stdout.splitlines()] == ["bb", "bb2", "other"]
    inspected = json.loads(_env("inspect", "bb", state=state).stdout)
    assert inspected["env"] == ["PATH=/bin", "LANG=C.UTF-8"] and inspected["image_format"] == "oci-layout"
    assert inspected["working_dir"] == "/work" and inspected["user"] == "1000"  # recorded as the image says
    assert inspected["box"] == {  # and what a box makes of them
        "env": {"PATH": "/bin", "LANG": "C.UTF-8"},
        "working_dir": "/box",
        "user": "sandbox (uid 1000)",
    }
    assert (Path(inspected["rootfs"]) / "etc/marker").is_file()
    assert _env("rm", "bb", state=state).stdout == "removed bb (its files stay: another name points to them)\n"
    assert _env("rm", "bb2", state=state).stdout == "removed bb2\n"
    assert not Path(inspected["rootfs"]).exists()
    assert _env("gc", state=state).stdout == "gc: 0 removed\n"


def test_user_mistakes_exit_2_with_one_line(tmp_path: Path) -> None:
    state = tmp_path / "state"
    write_oci_layout(tmp_path / "evil", [layer(Entry("lib", tarfile.SYMTYPE, linkname="/etc"), Entry("lib/x"))])
    (tmp_path / "bad.toml").write_text('[environment]\nname = "x"\napt = ["a;b"]\n')
    cases = [
        (("import", "evil", tmp_path / "evil"), "goes through 'lib', which is a symlink"),
        (("import", "Bad Name", tmp_path / "evil"), "environment name 'Bad Name' is invalid"),
        (("import", "x", tmp_path / "nothing.tar"), "no such file or directory"),
        (("inspect", "ghost"), "no environment named 'ghost'"),
        (("rm", "ghost"), "no environment named 'ghost'"),
        (("build", tmp_path / "bad.toml"), "apt package 'a;b'"),
        (("build", tmp_path / "missing.toml"), "cannot read the spec"),
    ]
    for (cmd, *args), message in cases:
        done = _env(cmd, *args, state=state)
        assert done.returncode == 2, (cmd, done.stderr)
        assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
