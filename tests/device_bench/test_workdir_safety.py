"""Data safety of the work dir: edgeslim deletes only folders it created there, on ``local`` and over SSH.

The SSH cases run against the real sshd of the ``sshd`` fixture (it logs in on this machine, so the
"remote" files are checked directly on disk).
"""

from __future__ import annotations

import sys
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench_fixtures import SshServer

from edgeslim.device_bench import DeviceOptions, resolve_device
from edgeslim.device_bench.errors import DeviceError, UnsafeDeleteError
from edgeslim.device_bench.setup import setup
from edgeslim.device_bench.targets import Connection
from edgeslim.device_bench.targets.base import OWNED_MARKER
from edgeslim.device_bench.targets.ssh import remote_workdir


@pytest.fixture(params=["local", "ssh"])
def conn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Connection]:
    """An open connection whose work dir is ``tmp_path / "wd"``, on ``local`` and over the real sshd."""
    workdir = tmp_path / "wd"
    if request.param == "local":
        c = resolve_device("local", DeviceOptions(workdir=str(workdir))).connect()
    else:
        server: SshServer = request.getfixturevalue("sshd")
        c = resolve_device(server.url, server.options(workdir)).connect()
    try:
        yield c
    finally:
        c.close()


def _victims(tmp_path: Path) -> tuple[Path, Path]:
    """A user folder beside the work dir and a user folder inside it, each holding a file."""
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "data.txt").write_text("mine")
    inside = tmp_path / "wd" / "wheels"
    inside.mkdir(parents=True, exist_ok=True)
    (inside / "my.whl").write_text("mine too")
    return outside, inside


def test_remove_refuses_paths_outside_the_workdir(conn: Connection, tmp_path: Path) -> None:
    outside, _ = _victims(tmp_path)
    (outside / OWNED_MARKER).write_text("")  # even a marked folder is refused outside the work dir
    wd = conn.workdir()
    (Path(wd) / "link").symlink_to(outside)
    for path in (str(outside), f"{wd}/../precious", f"{wd}/link", wd, "/"):
        with pytest.raises(UnsafeDeleteError, match="is not inside") as info:
            conn.remove(path)
        assert path in str(info.value) and "work dir" in str(info.value)
    assert (outside / "data.txt").read_text() == "mine"


def test_remove_refuses_folders_edgeslim_did_not_create(conn: Connection, tmp_path: Path) -> None:
    _, inside = _victims(tmp_path)
    (Path(conn.workdir()) / "notes.txt").write_text("a file of mine")
    for path in (str(inside), f"{conn.workdir()}/notes.txt"):
        with pytest.raises(UnsafeDeleteError, match=f"not created by edgeslim.*{OWNED_MARKER}") as info:
            conn.remove(path)
        assert path in str(info.value)
    assert (inside / "my.whl").read_text() == "mine too"
    assert (Path(conn.workdir()) / "notes.txt").exists()


def test_make_dir_marks_and_remove_deletes_it(conn: Connection, tmp_path: Path) -> None:
    path = conn.make_dir("run-test")
    assert Path(path) == tmp_path / "wd" / "run-test" and (Path(path) / OWNED_MARKER).is_file()
    (Path(path) / "sub").mkdir()
    (Path(path) / "sub" / "f").write_text("x")
    outside, _ = _victims(tmp_path)
    (Path(path) / "escape").symlink_to(outside)  # a link inside is deleted, never followed
    conn.remove(path)
    assert not Path(path).exists() and (outside / "data.txt").read_text() == "mine"
    conn.remove(path)  # already gone: nothing to do
    Path(path).mkdir()
    with pytest.raises(DeviceError, match="only uses folders it creates"):
        conn.make_dir("run-test")  # never adopts an existing folder (it would then delete it)
    for bad in ("", "..", "a/b"):
        with pytest.raises(DeviceError, match="one path component"):
            conn.make_dir(bad)


def _tiny_wheel(dest: Path) -> Path:
    """A minimal pure-Python wheel: module ``edgeslim_tiny_pkg`` with ``VALUE = 42``."""
    wheel = dest / "edgeslim_tiny_pkg-1.0-py3-none-any.whl"
    info = "edgeslim_tiny_pkg-1.0.dist-info"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("edgeslim_tiny_pkg/__init__.py", "VALUE = 42\n")
        zf.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: edgeslim-tiny-pkg\nVersion: 1.0\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    return wheel


def test_setup_keeps_a_user_wheels_folder(sshd: SshServer, tmp_path: Path) -> None:
    """``device setup`` used to ``rm -r WORKDIR/wheels``; now it deletes only its own upload folder."""
    _, inside = _victims(tmp_path)
    wheel = _tiny_wheel(tmp_path)
    report = setup(sshd.url, [], sshd.options(tmp_path / "wd"), wheels=[wheel])
    assert report["wheels"] == [wheel.name] and report["into"] == str(tmp_path / "wd" / "site")
    assert (tmp_path / "wd" / "site" / "edgeslim_tiny_pkg" / "__init__.py").read_text() == "VALUE = 42\n"
    assert (inside / "my.whl").read_text() == "mine too"  # the user's folder is untouched
    assert sorted(p.name for p in (tmp_path / "wd").iterdir()) == ["site", "wheels"]  # upload folder removed


def test_relative_workdir_is_relative_to_the_login_home(sshd: SshServer, tmp_path: Path) -> None:
    assert remote_workdir("bench", "/home/pi") == "/home/pi/bench"
    assert remote_workdir("~/x/../y", "/home/pi") == "/home/pi/y"
    assert remote_workdir(None, "/home/pi") == "/home/pi/.cache/edgeslim-bench"
    assert remote_workdir("/abs", "/home/pi") == "/abs"
    with pytest.raises(DeviceError, match="~user"):
        remote_workdir("~bob/x", "/home/pi")
    name = f"edgeslim-rel-{uuid.uuid4().hex[:8]}"
    home = Path.home()  # the fixture's sshd logs in as this user on this machine
    conn = resolve_device(sshd.url, sshd.options(workdir=f"{name}/wd")).connect()
    try:
        assert conn.workdir() == str(home / name / "wd")
        assert (home / name / "wd").is_dir() and not Path("/", name).exists()  # once created at /
        report = conn.make_dir("probe")
        assert Path(report).parent == home / name / "wd"
        conn.remove(report)
    finally:
        conn.close()
        for p in (home / name / "wd", home / name):
            p.rmdir()


def test_relative_workdir_local_is_relative_to_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    conn = resolve_device("local", DeviceOptions(workdir="rel", python=sys.executable)).connect()
    assert conn.workdir() == str(tmp_path / "rel") and (tmp_path / "rel").is_dir()
