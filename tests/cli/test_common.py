"""The shared ``--out``/``--force`` check of the commands."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from edgeslim.cli.common import refuse_existing, refuse_existing_outputs


def test_refuse_existing_outputs_names_every_existing_file(tmp_path: Path) -> None:
    (tmp_path / "report.md").write_text("old")
    (tmp_path / "plot.png").write_text("old")
    names = ["model.pt", "report.md", "plot.png", "report.md"]
    with pytest.raises(typer.BadParameter) as info:
        refuse_existing_outputs(tmp_path, names, force=False)
    msg = info.value.format_message()
    assert f"{tmp_path} already holds report.md, plot.png; pass --force to overwrite them" in msg
    assert "model.pt" not in msg and "--out" in msg
    refuse_existing_outputs(tmp_path, names, force=True)  # --force: nothing refused
    refuse_existing_outputs(tmp_path, ["model.pt"], force=False)  # nothing exists yet
    refuse_existing_outputs(tmp_path / "new", names, force=False)  # folder not created yet
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png", "report.md"]  # the check writes nothing


def test_refuse_existing_single_file_and_file_as_folder(tmp_path: Path) -> None:
    dest = tmp_path / "m.onnx"
    refuse_existing(dest, force=False)
    dest.write_text("old")
    with pytest.raises(typer.BadParameter, match=r"already holds m\.onnx; pass --force to overwrite it"):
        refuse_existing(dest, force=False)
    refuse_existing(dest, force=True)
    with pytest.raises(typer.BadParameter, match="is a file, not a folder"):
        refuse_existing_outputs(dest, ["model.pt"], force=True)
