"""``device check`` / ``device setup`` against the real sshd, with a device Python that has no numpy."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from bench_fixtures import SshServer

from edgeslim.device_bench import bench
from edgeslim.device_bench.errors import DeviceConfigError, RuntimeMissingError
from edgeslim.device_bench.setup import check, platform_tags, setup

BARE_PYTHON = "/usr/bin/python3"


def test_platform_tags() -> None:
    tags = platform_tags("aarch64", "glibc-2.31")
    assert tags[0] == "manylinux_2_31_aarch64" and "manylinux_2_17_aarch64" in tags and "manylinux2014_aarch64" in tags
    with pytest.raises(DeviceConfigError, match="only glibc"):
        platform_tags("aarch64", "-")


@pytest.mark.slow
def test_setup_installs_wheels_for_an_offline_python(sshd: SshServer, models: dict[str, Path], tmp_path: Path) -> None:
    if not Path(BARE_PYTHON).exists() or subprocess.run([BARE_PYTHON, "-c", "import numpy"], check=False,
                                                        capture_output=True).returncode == 0:
        pytest.skip(f"needs a {BARE_PYTHON} without numpy (Debian's python3 without python3-numpy)")
    opts = sshd.options(tmp_path / "remote", python=BARE_PYTHON)
    before = check(sshd.url, opts)
    assert before["numpy_version"] is None and before["runtimes"]["onnxruntime"] is None
    assert any("pip install --user numpy" in f for f in before["fixes"])
    assert any("edgeslim device setup" in f for f in before["fixes"])
    with pytest.raises(RuntimeMissingError):
        bench(models["small"], sshd.url, runs=2, options=opts)
    report = setup(sshd.url, ["onnxruntime"], opts)
    assert any(w.startswith("onnxruntime-") for w in report["wheels"]) and report["into"].endswith("/site")
    after = check(sshd.url, opts)
    assert after["numpy_version"] and after["runtimes"]["onnxruntime"] and not any("numpy" in f for f in after["fixes"])
    d = bench(models["small"], sshd.url, runs=3, options=opts).results[0].data
    assert d["python_executable"] == BARE_PYTHON and d["p50"] > 0
    assert not (tmp_path / "remote" / "wheels").exists()  # uploads removed after unpacking
