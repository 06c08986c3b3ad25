"""No raw traceback from any command: unexpected failures exit 70 with a short message and a log file.

Every failure here is real (a user's model whose forward raises or breaks once pruned, a path
under a file, a Ctrl-C sent by the model itself): no mocks.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from edgeslim.cli import app
from edgeslim.cli.failure import EXIT_INTERRUPTED, EXIT_SOFTWARE, EXIT_USAGE, log_dir
from tests.cli.conftest import EDGESLIM

NET_PY = '''
import os
import signal

import torch
from torch import nn


class Head(nn.Module):
    """Reads its width as a fixed number: breaks once the channels before it are pruned."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        y = self.conv(x).mean((2, 3))
        return self.fc(y.reshape(-1, 16))


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), Head())


class InferenceOnly(nn.Module):
    """Refuses to run with autograd on: torch-pruning follows channels through autograd, so it cannot trace this."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        if torch.is_grad_enabled():
            raise RuntimeError("InferenceOnly runs under torch.no_grad() only")
        return self.fc(self.conv(x).mean((2, 3)))


def inference_only():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), InferenceOnly())


class Boom(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        raise RuntimeError("Boom.forward cannot run on this input")


def boom():
    return nn.Sequential(nn.Conv2d(3, 3, 1), Boom())


class CtrlC(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C
        return self.conv(x).mean((2, 3))


def ctrl_c():
    return nn.Sequential(CtrlC())
'''


FLAKY_PY = '''import torch


class Flaky:
    """Yields one batch, then fails (a broken file in the middle of a data set)."""

    def __len__(self):
        return 4

    def __iter__(self):
        yield torch.rand(8, 3, 16, 16), torch.randint(0, 2, (8,))
        raise OSError(5, "Input/output error reading batch 2", "/data/shard-0002.bin")


def loaders():
    return Flaky(), Flaky()
'''


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``net.py`` (the models above) and ``d.npz`` (64 training and 32 evaluation 16x16 RGB images)."""
    root = tmp_path_factory.mktemp("fail")
    (root / "net.py").write_text(NET_PY)
    rng = np.random.default_rng(0)
    x, xv = (rng.integers(0, 255, (n, 16, 16, 3)).astype(np.uint8) for n in (64, 32))
    np.savez(root / "d.npz", x=x, y=rng.integers(0, 2, 64), x_val=xv, y_val=rng.integers(0, 2, 32))
    return root / "net.py", root / "d.npz"


def _flat(text: str) -> str:
    return " ".join(text.replace("│", " ").split())


def _invoke(args: list[str], state: Path) -> tuple[int, str]:
    """Run ``edgeslim ARGS`` in-process; returns the exit code and stdout + stderr."""
    result = CliRunner().invoke(app, args, env={"XDG_STATE_HOME": str(state), "COLUMNS": "200"})
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def _logs(state: Path) -> list[Path]:
    folder = state / "edgeslim" / "logs"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def check_unexpected(args: list[str], state: Path, *expected: str) -> str:
    """``args`` fail unexpectedly: exit 70, no traceback, ``expected`` in the message, the log written;
    with ``--debug`` the traceback is printed too. Returns the message (flattened)."""
    code, output = _invoke(args, state)
    msg = _flat(output)
    assert code == EXIT_SOFTWARE, output
    assert "Traceback" not in output and 'File "' not in output
    assert f"edgeslim {args[0]}" in msg and "failed unexpectedly" in msg
    for text in expected:
        assert text in msg, (text, output)
    (log,) = _logs(state)
    assert f"log: {log}" in output
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and f"{args[0]}" in text.splitlines()[0]

    code, debug_out = _invoke([*args, "--debug"], state)
    assert code == EXIT_SOFTWARE
    assert "Traceback (most recent call last)" in debug_out
    assert len(_logs(state)) == 2  # one file per failure, the first one kept
    assert log.read_text() == text
    return msg


def test_prune_of_a_model_edgeslim_cannot_follow_names_the_module(files: tuple[Path, Path], tmp_path: Path) -> None:
    """The issue's show item, through the real console script: a forward torch-pruning cannot trace (it refuses
    autograd): exit != 0, no traceback, a message naming the module, the log path printed."""
    net, _ = files
    state = tmp_path / "state"
    env = {**os.environ, "XDG_STATE_HOME": str(state), "COLUMNS": "80"}
    proc = subprocess.run([*EDGESLIM, "prune", "--model", f"{net}:inference_only", "--target", "ratio=0.5",
                           "--input-size", "16", "--out", str(tmp_path / "o")], capture_output=True, text=True,
                          timeout=300, env=env, check=False)
    assert proc.returncode in (EXIT_USAGE, EXIT_SOFTWARE), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    msg = _flat(proc.stderr)
    assert "module '2' (InferenceOnly)" in msg and "InferenceOnly runs under torch.no_grad() only" in msg, msg
    (log,) = _logs(state)
    assert f"log: {log}" in proc.stderr  # one line, never wrapped
    text = log.read_text()
    assert text.splitlines()[1].startswith("command: edgeslim prune --model")
    assert "Traceback (most recent call last)" in text and "in forward" in text and "RuntimeError" in text
    assert not (tmp_path / "o" / "model.pt").exists()


def test_prune_of_a_model_whose_forward_breaks_once_pruned_leaves_that_group_whole(files: tuple[Path, Path],
                                                                                 tmp_path: Path) -> None:
    """A head reading its width as a fixed number: that group is left whole, the rest pruned, exit 0."""
    net, _ = files
    proc = subprocess.run([*EDGESLIM, "prune", "--model", f"{net}:build", "--target", "ratio=0.5", "--input-size", "16",
                           "--out", str(tmp_path / "o"), "--json"], capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["params_after"] < summary["params_before"]
    assert [d["module"] for d in summary["left_whole"]] == ["2.conv"], summary["left_whole"]
    assert "shape '[-1, 16]' is invalid" in summary["left_whole"][0]["reason"]


def test_prune_with_a_data_source_that_fails_midway(files: tuple[Path, Path], tmp_path: Path) -> None:
    net, _ = files
    data = tmp_path / "flaky.py"
    data.write_text(FLAKY_PY)
    check_unexpected(["prune", "--model", f"{net}:build", "--data", f"python:{data}:loaders", "--eval",
                            "--target", "ratio=0.5", "--input-size", "16", "--out", str(tmp_path / "o")],
                           tmp_path / "s", "OSError: [Errno 5] Input/output error reading batch 2",
                           f"raised in your code at {data}:12 in __iter__",
                           "try: check /data/shard-0002.bin (Input/output error reading batch 2)")
    assert not (tmp_path / "o").exists()


def test_debug_before_the_command_works_too(files: tuple[Path, Path], tmp_path: Path) -> None:
    net, data = files
    code, output = _invoke(["--debug", "quantize", "--model", f"{net}:boom", "--data", f"npz:{data}", "--input-size",
                            "16", "--out", str(tmp_path / "q")], tmp_path / "s")
    assert code == EXIT_SOFTWARE and "Traceback (most recent call last)" in output


def test_sensitivity(files: tuple[Path, Path], tmp_path: Path) -> None:
    net, data = files
    msg = check_unexpected(["sensitivity", "--model", f"{net}:boom", "--data", f"npz:{data}", "--input-size", "16",
                            "--out", str(tmp_path / "o")], tmp_path / "s",
                           "RuntimeError: Boom.forward cannot run on this input", "in module '1' (Boom)",
                           f"raised at {net}:")
    assert "your code raised this" in msg


def test_quantize(files: tuple[Path, Path], tmp_path: Path) -> None:
    net, data = files
    check_unexpected(["quantize", "--model", f"{net}:boom", "--data", f"npz:{data}", "--input-size", "16", "--out",
                      str(tmp_path / "o")], tmp_path / "s", "in module '1' (Boom)")


def test_export(files: tuple[Path, Path], tmp_path: Path) -> None:
    net, data = files
    check_unexpected(["export", "--model", f"{net}:boom", "--data", f"npz:{data}", "--input-size", "16", "--out",
                      str(tmp_path / "m.onnx")], tmp_path / "s", "Boom.forward cannot run on this input")


def test_pack(files: tuple[Path, Path], tmp_path: Path) -> None:
    net, _ = files
    check_unexpected(["pack", "--model", f"{net}:boom", "--input-size", "16", "--out", str(tmp_path / "m.esz")],
                     tmp_path / "s", "Boom.forward cannot run on this input")


def test_finetune(files: tuple[Path, Path], tmp_path: Path) -> None:
    net, data = files
    check_unexpected(["finetune", "--model", f"{net}:boom", "--data", f"npz:{data}", "--input-size", "16",
                      "--batch-size", "16", "--out", str(tmp_path / "o")], tmp_path / "s",
                     "in module '1' (Boom)")


def test_compress_names_the_failed_step_and_keeps_the_finished_ones(files: tuple[Path, Path], tmp_path: Path) -> None:
    net, data = files
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": f"{net}:boom", "data": f"npz:{data}", "input_size": 16, "eval_samples": 16,
        "export": {"formats": ["onnx"], "variants": ["original"], "verify_samples": 8},
    }))
    out = tmp_path / "run"
    msg = check_unexpected(["compress", str(recipe), "--out", str(out)], tmp_path / "s")
    assert re.search(r"failed unexpectedly in step \w+", msg), msg
    assert f"the finished steps are kept in {out}" in msg


def test_demo_out_under_a_file(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("mine")
    check_unexpected(["demo", "--out", str(afile / "demo")], tmp_path / "s", "NotADirectoryError",
                           f"try: check {afile / 'demo'} (Not a directory)")
    assert afile.read_text() == "mine"


def test_bench_results_file_under_a_file(tmp_path: Path) -> None:
    import torch

    onnx = tmp_path / "tiny.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 2, 1), (torch.randn(1, 3, 8, 8),), str(onnx), dynamo=False)
    afile = tmp_path / "afile"
    afile.write_text("mine")
    check_unexpected(["bench", str(onnx), "--runs", "2", "--warmup", "0", "--results", str(afile / "r.jsonl")],
                     tmp_path / "s", "FileExistsError", f"check {afile}")


def test_device_check_workdir_under_a_file(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("mine")
    msg = check_unexpected(["device", "check", "local", "--workdir", str(afile / "w")], tmp_path / "s",
                           "NotADirectoryError")
    assert "edgeslim device check failed unexpectedly" in msg


def test_edgeslim_error_keeps_exit_2_and_one_line(files: tuple[Path, Path], tmp_path: Path) -> None:
    """A failure edgeslim foresaw: its own message, exit 2, no log file; --debug adds the traceback."""
    code, output = _invoke(["prune", "--model", "resnet180", "--out", str(tmp_path / "o")], tmp_path / "s")
    assert code == EXIT_USAGE and "error: ModelLoadError: unknown model 'resnet180'" in _flat(output)
    assert "Traceback" not in output and _logs(tmp_path / "s") == []
    code, output = _invoke(["prune", "--model", "resnet180", "--out", str(tmp_path / "o"), "--debug"], tmp_path / "s")
    assert code == EXIT_USAGE and "Traceback (most recent call last)" in output


def _default_sigint() -> None:
    """In the child: Ctrl-C handled as in a terminal (a pytest-xdist worker ignores SIGINT, and children inherit it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_exits_130_with_one_line(files: tuple[Path, Path], tmp_path: Path) -> None:
    net, data = files
    state = tmp_path / "state"
    env = {**os.environ, "XDG_STATE_HOME": str(state), "COLUMNS": "200"}
    proc = subprocess.run([*EDGESLIM, "quantize", "--model", f"{net}:ctrl_c", "--data", f"npz:{data}",
                           "--input-size", "16", "--out", str(tmp_path / "q")], capture_output=True, text=True,
                          timeout=300, env=env, check=False, preexec_fn=_default_sigint)
    assert proc.returncode == EXIT_INTERRUPTED, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "interrupted: edgeslim quantize stopped; files already written are kept" in _flat(proc.stderr)
    assert _logs(state) == []


def test_log_files_never_overwrite_each_other(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeslim.cli.failure import write_log

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert log_dir() == tmp_path / "edgeslim" / "logs"
    paths = []
    for i in range(3):
        try:
            raise ValueError(f"failure {i}")
        except ValueError as exc:
            paths.append(write_log(exc, "device check", ["edgeslim", "device", "check"]))
    assert len(set(paths)) == 3 and all(p is not None and p.parent == log_dir() for p in paths)
    assert [p.read_text().count(f"ValueError: failure {i}") for i, p in enumerate(paths) if p] == [1, 1, 1]
    assert all(p is not None and "-device-check-" in p.name for p in paths)
