"""``edgeslim demo``: the short case study end to end on the bundled model and real data."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.conftest import last_json, run_cli


def _message(stderr: str) -> str:
    """The error text with rich's panel borders and line wrapping removed."""
    return " ".join(stderr.replace("│", " ").split())


def test_demo_runs_the_short_case_study_on_real_data(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    out.mkdir()
    mine = out / "notes.txt"
    mine.write_text("a user's file")
    args = ("demo", "--out", str(out), "--finetune-epochs", "0.02", "--test-limit", "300", "--bench-size", "64", "--json")
    refused = run_cli(*args, check=False)
    msg = _message(refused.stderr)
    assert refused.returncode != 0 and "--force" in msg, refused.stderr
    assert mine.read_text() == "a user's file" and not (out / "results.json").exists()

    s = last_json(run_cli(*args, "--force"))
    assert mine.read_text() == "a user's file"  # --force overwrites edgeslim's own files only
    rows = {r["variant"]: r for r in s["rows"]}
    assert list(rows) == ["original", "pruned", "quantized", "pruned+quantized"]
    orig, final = rows["original"], rows["pruned+quantized"]
    assert orig["top1"] > 0.88 and final["top1"] > 0.8  # real images, real weights
    assert abs(final["params"] / orig["params"] - 0.5) < 0.03
    assert 6.5 < s["size_ratio"] < 9.0  # half the parameters at a quarter of the bytes each
    for key in ("onnxruntime@local", "ai-edge-litert@local"):
        assert orig["latency_ms"][key] > 0 and final["latency_ms"][key] > 0
    # every artefact was timed at the bench size (a dynamic-H/W ONNX file once ran at 1x1)
    timed = [json.loads(line) for line in (out / "bench.jsonl").read_text().splitlines() if line.strip()]
    shapes = [r["inputs"][0]["shape"] for r in timed if "inputs" in r]
    assert len(shapes) == 4 and all(sorted(sh)[-2:] == [64, 64] for sh in shapes), shapes
    assert Path(s["report_html"]).is_file() and (out / "report.md").is_file()


def test_top1_change_says_gained_or_lost_and_whether_it_is_noise() -> None:
    """The demo once printed ``-0.40 pt of top-1 lost`` for a gain; 4 images of 1,000 are noise."""
    from edgeslim.cli.demo import top1_change, wilson_interval

    low, high = wilson_interval(0.921, 1000)  # (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n), z = 1.96
    assert round(low, 5) == 0.90262 and round(high, 5) == 0.93615
    assert wilson_interval(1.0, 50)[1] == 1.0 and round(wilson_interval(1.0, 50)[0], 4) == 0.9286
    assert top1_change(0.921, 0.925, 1000) == "gained 0.40 pt of top-1 (within noise: 95 % interval 90.26-93.62 % on 1,000 images)"
    assert top1_change(0.925, 0.921, 1000) == "lost 0.40 pt of top-1 (within noise: 95 % interval 90.70-93.97 % on 1,000 images)"
    assert top1_change(0.92, 0.90, 10000) == "lost 2.00 pt of top-1 (beyond noise: 95 % interval 91.45-92.52 % on 10,000 images)"
    assert top1_change(0.90, 0.93, 10000).startswith("gained 3.00 pt of top-1 (beyond noise")
    assert top1_change(0.9, 0.9, 300).startswith("top-1 unchanged (within noise")
