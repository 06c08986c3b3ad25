"""The report renderer, checked in a real headless browser (chromium): tables, plots, escaping, no network."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from edgeslim.exporters.errors import OutputExistsError
from edgeslim.report import REPORT_FILES, ReportDataError, render_html, render_markdown, render_report
from tests.report.conftest import Browser, Dom, parse_dom

ORT, LITERT = "onnxruntime@local", "litert@local"
VARIANTS = ["original", "pruned", "quantized", "pruned+quantized"]
HOSTILE = "<script>document.body.dataset.pwned='1'</script>"
HOSTILE_IMG = "<img src=x onerror=\"document.body.dataset.pwned='2'\">"


def _results() -> dict[str, Any]:
    """ResNet-18 on Fashion-MNIST, numbers in the range of benchmarks/results (a renderer test)."""

    def row(v: str, b: int, p: int, m: int, t: float, o: float, li: float, **kw: str) -> dict[str, Any]:
        return {"variant": v, "bytes": b, "params": p, "macs": m, "top1": t, "latency_ms": {ORT: o, LITERT: li}, **kw}

    front = [
        {"bytes": 2_410_000, "predicted_ms": 4.6, "measured_ms": 4.9, "proxy": 0.8712, "top1": 0.9102, "chosen": False},
        {"bytes": 3_160_000, "predicted_ms": 5.1, "measured_ms": 5.4, "proxy": 0.9215, "top1": 0.9281, "chosen": True},
        {"bytes": 5_900_000, "predicted_ms": 6.2, "measured_ms": None, "proxy": 0.9402, "top1": None, "chosen": False},
    ]
    trace = [
        {"step": i, "change": f"layer{1 + i % 4}: keep {1 - 0.05 * (i + 1):.2f}", "bytes": 11_325_000 - 700_000 * i,
         "macs": 1_818_558_976 - 80_000_000 * i, "predicted_ms": 6.8 - 0.12 * i,
         "measured_ms": 6.9 - 0.12 * i if i % 4 == 0 else None, "proxy": 0.95 - 0.002 * i, "accepted": i % 3 != 2}
        for i in range(12)
    ]
    layers = [
        {"name": f"layer{s}.{b}.conv{c}", "channels_before": 64 * 2 ** (s - 1),
         "channels_after": int(64 * 2 ** (s - 1) * (0.75 - 0.1 * s)), "keep_ratio": 0.75 - 0.1 * s, "bits": 8 if c == 1 else 16}
        for s in range(1, 5) for b in range(2) for c in (1, 2)
    ]
    return {
        "title": "ResNet-18 (Fashion-MNIST): latency-driven compression",
        "model": "resnet18-fmnist", "created": "2026-12-02T12:00:00+00:00", "commit": "98307ac",
        "command": "edgeslim compress recipes/resnet18.yaml --out runs/r18",
        "recipe": {"model": "resnet18-fmnist", "prune": {"target": {"latency_ms": 5.5}, "round_to": 16},
                   "quantize": "int8", "export": ["onnx", "tflite"]},
        "rows": [
            row("original", 44_774_000, 11_689_512, 1_818_558_976, 0.9340, 20.0, 21.7, file="original.onnx"),
            row("pruned", 12_260_000, 3_060_000, 520_000_000, 0.9290, 14.9, 16.2, file="pruned.onnx"),
            row("quantized", 11_325_000, 11_689_512, 1_818_558_976, 0.9333, 6.8, 6.6, notes="U8S8"),
            row("pruned+quantized", 3_160_000, 3_060_000, 520_000_000, 0.9281, 5.4, 5.4, file="pq.tflite"),
        ],
        "search": {"budget": {"latency_ms": 5.5, "max_drop": 0.01}, "measurements": 4, "front": front, "trace": trace},
        "layers": layers,
        "steps": [{"name": "prune", "seconds": 84.2, "status": "done"}, {"name": "finetune", "seconds": 312.5, "status": "resumed"},
                  {"name": "quantize", "seconds": 41.0, "status": "done"}, {"name": "bench", "seconds": 0.0, "status": "skipped"}],
    }


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory, browser: Browser) -> tuple[dict[str, Path], Dom, Path]:
    """The full report written once, its DOM after chromium ran the page, and a screenshot."""
    out = tmp_path_factory.mktemp("report")
    paths = render_report(_results(), out)
    dom = parse_dom(browser.dump_dom(paths["html"]))
    return paths, dom, browser.screenshot(paths["html"], out / "shot.png")


def _table(dom: Dom, *headers: str) -> list[list[str]]:
    """The one table whose header row starts with ``headers``."""
    matches = [t for t in dom.tables if t and t[0][: len(headers)] == list(headers)]
    assert len(matches) == 1, f"expected one table headed {headers}, got {[t[0] for t in dom.tables if t]}"
    return matches[0]


def test_render_report_writes_both_files(rendered: tuple[dict[str, Path], Dom, Path]) -> None:
    paths, _, _ = rendered
    assert set(paths) == set(REPORT_FILES)
    assert {p.name for p in paths.values()} == {"report.html", "report.md"}
    assert all(p.is_file() and p.stat().st_size > 1000 for p in paths.values())
    assert not list(paths["html"].parent.glob(".*.tmp")), "a temporary file was left behind"


def test_variants_table_in_browser(rendered: tuple[dict[str, Path], Dom, Path]) -> None:
    _, dom, _ = rendered
    table = _table(dom, "Variant")
    header, rows = table[0], {r[0]: dict(zip(table[0], r, strict=True)) for r in table[1:]}
    assert [r[0] for r in table[1:]] == VARIANTS
    assert f"{ORT} (ms)" in header and f"{LITERT} speed-up" in header
    pq, orig = rows["pruned+quantized"], rows["original"]
    assert (orig["Size (MB)"], orig["Params"], orig["MACs"], orig["Top-1 (%)"]) == ("44.77", "11.69 M", "1.82 G", "93.40")
    assert (orig["Size ratio"], orig[f"{ORT} speed-up"]) == ("1.000", "1.00×")
    assert (pq["Size (MB)"], pq["Size ratio"], pq["Top-1 (%)"]) == ("3.16", "0.071", "92.81")
    assert (pq[f"{ORT} (ms)"], pq[f"{ORT} speed-up"], pq[f"{LITERT} speed-up"]) == ("5.40", "3.70×", "4.02×")
    assert rows["quantized"]["Notes"] == "U8S8" and pq["File"] == "pq.tflite"


def test_plots_render_in_browser(rendered: tuple[dict[str, Path], Dom, Path]) -> None:
    _, dom, _ = rendered
    plots = [img for img in dom.images if img.get("class") == "plot"]
    assert len(plots) == 5, f"expected variants, pareto, trace, layers and steps plots, got {len(plots)}"
    for img in plots:
        size = img.get("data-rendered")
        assert size is not None, f"the page's script did not run (CSP hash?) for {img.get('alt')}"
        width, height = map(int, size.split("x"))
        assert width > 300 and height > 100, f"plot {img.get('alt')} rendered at {size}"
    assert dom.body.get("data-plots-rendered") == "5"


def test_screenshot_is_not_blank(rendered: tuple[dict[str, Path], Dom, Path]) -> None:
    _, _, shot = rendered
    with Image.open(shot) as img:
        assert img.size == (1280, 2400)
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 100, f"screenshot has {len(colours or [])} colours"
    assert max(c for c, _ in colours) < 0.95 * 1280 * 2400, "screenshot is almost one colour"


def test_self_contained_no_network_references(rendered: tuple[dict[str, Path], Dom, Path]) -> None:
    html = rendered[0]["html"].read_text(encoding="utf-8")
    remote = re.findall(r"""(?:\b(?:src|href)\s*=\s*["']?\s*|url\(\s*["']?|@import\s+["']?)(?:https?:)?//""", html, re.I)
    assert remote == [], f"remote resource references: {remote}"
    assert not re.search(r"<(?:link|iframe|object|embed)\b", html, re.I)
    assert "default-src 'none'" in html and "img-src data:" in html
    assert all(str(img.get("src", "")).startswith("data:image/png;base64,") for img in rendered[1].images)


def test_search_layers_steps_and_provenance(rendered: tuple[dict[str, Path], Dom, Path]) -> None:
    _, dom, _ = rendered
    front = _table(dom, "#")
    chosen = [i for i, cls in enumerate(dom.row_classes[dom.tables.index(front)]) if cls == "hl"]
    assert chosen == [2] and front[2][1:5] == ["3.16", "5.10", "5.40", "1.06"] and front[2][-1] == "yes"
    assert front[3][3:5] == ["not measured", "not measured"] and front[3][6] == "not measured"
    trace = _table(dom, "Step", "Change")
    assert len(trace) == 13 and trace[1][1] == "layer1: keep 0.95" and trace[3][-1] == "no"
    layers = _table(dom, "Layer")
    assert layers[1] == ["layer1.0.conv1", "64", "41", "0.650", "8"] and layers[-1][-1] == "16"
    timings = _table(dom, "Step", "Seconds", "Status")
    assert timings[-1] == ["total", "437.7", ""] and timings[2] == ["finetune", "312.5", "resumed"]
    assert _table(dom, "Budget")[1:] == [["latency_ms", "5.5"], ["max_drop", "0.01"], ["measurements", "4"]]
    for text in ("98307ac", "edgeslim compress recipes/resnet18.yaml --out runs/r18", "round_to: 16"):
        assert text in dom.text


def test_markdown_has_the_same_tables(rendered: tuple[dict[str, Path], Dom, Path]) -> None:
    md = rendered[0]["md"].read_text(encoding="utf-8")
    header = next(line for line in md.splitlines() if line.startswith("| Variant |"))
    line = next(line for line in md.splitlines() if line.startswith("| pruned+quantized |"))
    assert line.count(" | ") == header.count(" | ")
    for cell in ("3.16", "0.071", "92.81", "5.40", "3.70×", "4.02×"):
        assert f"| {cell} |" in line
    assert "| **2** | **3.16** |" in md  # the chosen front point
    assert "## Layers" in md and "| layer1.0.conv1 | 64 | 41 | 0.650 | 8 |" in md and "| total | 437.7 |" in md
    assert "```yaml\nmodel: resnet18-fmnist" in md and "edgeslim compress recipes/resnet18.yaml" in md


def test_strings_are_escaped_in_browser_and_markdown(tmp_path: Path, browser: Browser) -> None:
    res = _results()
    res["title"] = "</title><script>document.body.dataset.pwned='0'</script>"
    res["rows"].append({"variant": HOSTILE, "bytes": 1_000_000, "latency_ms": {ORT: 3.0}, "notes": HOSTILE_IMG})
    res["layers"][0]["name"] = "$x_1$ | <b>bold</b>"
    res["command"] = "echo '</code></pre><script>document.body.dataset.pwned=3</script>'"
    paths = render_report(res, tmp_path)
    dom = parse_dom(browser.dump_dom(paths["html"]))
    assert "data-pwned" not in str(dom.body), "a string from the results ran as script"
    assert dom.title == res["title"]
    variants = _table(dom, "Variant")
    assert variants[-1][0] == HOSTILE and variants[-1][-1] == HOSTILE_IMG
    assert _table(dom, "Layer")[1][0] == "$x_1$ | <b>bold</b>"
    assert dom.body.get("data-plots-rendered") == "5"
    md = paths["md"].read_text(encoding="utf-8")
    assert f"```sh\n{res['command']}\n```" in md  # literal inside a code fence
    outside = re.sub(r"```.*?```", "", md, flags=re.S)
    assert "<script>" not in outside and "<img" not in outside and "&lt;script&gt;" in outside
    hostile_line = next(line for line in md.splitlines() if "pwned='1'" in line)
    header = next(line for line in md.splitlines() if line.startswith("| Variant |"))
    assert hostile_line.count(" | ") == header.count(" | ")
    assert r"\$x\_1\$ \| &lt;b&gt;bold&lt;/b&gt;" in md


def test_missing_sections_and_values_render(tmp_path: Path, browser: Browser) -> None:
    res: dict[str, Any] = {"rows": [
        {"variant": "original", "bytes": 1_000_000, "params": None, "macs": None, "top1": None, "latency_ms": None},
        {"variant": "pruned", "bytes": None, "top1": "n/a", "latency_ms": {ORT: None}, "file": None, "notes": None},
        {"variant": "quantized"},
    ]}
    paths = render_report(res, tmp_path)
    dom = parse_dom(browser.dump_dom(paths["html"]))
    table = _table(dom, "Variant")
    assert [r[0] for r in table[1:]] == ["original", "pruned", "quantized"]
    assert table[1][1:6] == ["1.00", "1.000", "not measured", "not measured", "not measured"]
    assert table[2][5] == "n/a" and table[3][1] == "not measured"
    assert "Not in these results: search, layers, steps." in dom.text
    assert [img for img in dom.images if img.get("class") == "plot"] == []
    assert dom.body.get("data-plots-rendered") == "0"
    md = paths["md"].read_text(encoding="utf-8")
    assert "not measured" in md and "_Not in these results: search, layers, steps._" in md
    # every section present but full of None, and no rows at all
    empty = {"rows": [], "search": {"front": [{"bytes": None, "chosen": None}], "trace": [{"step": None}]},
             "layers": [{"name": None, "bits": None}], "steps": [{"name": "x", "seconds": None, "status": None}],
             "recipe": None, "command": None}
    assert "not measured" in render_html(empty) and "not measured" in render_markdown(empty)


def test_results_without_rows_are_refused() -> None:
    with pytest.raises(ReportDataError, match="'rows'"):
        render_html({"title": "x"})
    with pytest.raises(ReportDataError, match="dict"):
        render_markdown([])  # type: ignore[arg-type]


def test_overwrite_is_refused_and_names_the_file(tmp_path: Path) -> None:
    res = {"rows": [{"variant": "original", "bytes": 1_000}]}
    paths = render_report(res, tmp_path / "out")
    before = paths["html"].read_bytes()
    with pytest.raises(OutputExistsError, match=r"report\.html.*--force"):
        render_report({"rows": [{"variant": "other", "bytes": 2_000}]}, tmp_path / "out")
    assert paths["html"].read_bytes() == before
    paths["html"].unlink()
    with pytest.raises(OutputExistsError, match=r"report\.md"):  # nothing is written when one file exists
        render_report(res, tmp_path / "out")
    assert not paths["html"].exists()
    again = render_report({"rows": [{"variant": "other", "bytes": 2_000}]}, tmp_path / "out", overwrite=True)
    assert again == paths and "other" in paths["html"].read_text(encoding="utf-8")


#: Appended to a copy of the page (its CSP removed, as the page runs only its own script): how wide the page and
#: each table's box are, written into the DOM for --dump-dom.
_MEASURE = """<script>
window.addEventListener("load", function () {
  var root = document.documentElement;
  document.body.dataset.pageOverflow = String(root.scrollWidth - window.innerWidth);
  document.body.dataset.innerWidth = String(window.innerWidth);
  document.body.dataset.tableOverflow = Array.from(document.querySelectorAll("table")).map(function (t) {
    return String(Math.round(t.getBoundingClientRect().right - window.innerWidth));
  }).join(",");
  document.body.dataset.widestTable = String(Math.max.apply(null, Array.from(document.querySelectorAll("table"))
    .map(function (t) { return t.scrollWidth; })));
});
</script>"""


def test_wide_tables_scroll_inside_the_page_at_1024px(tmp_path: Path, browser: Browser) -> None:
    """A variants table wider than the window scrolls in its own box; the page never scrolls sideways."""
    results = _results()
    runtimes = [f"{rt}@{dev}" for rt in ("onnxruntime", "litert", "tensorrt") for dev in ("local", "rpi5-kitchen")]
    for i, row in enumerate(results["rows"]):
        row["latency_ms"] = {k: 5.0 + i + j for j, k in enumerate(runtimes)}
        row["file"] = f"resnet18_fashion_mnist_{row['variant'].replace('+', '_')}_round16_u8s8_calibrated_minmax.onnx"
    results["command"] = "edgeslim compress " + "/very/long/path/without/spaces" * 8 + "/recipe.yaml"
    html = render_report(results, tmp_path)["html"].read_text()
    page = tmp_path / "measured.html"
    page.write_text(re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html)
                    .replace("</body>", _MEASURE + "</body>"))
    body = parse_dom(browser.dump_dom(page, width=1024)).body
    assert body.get("data-inner-width") == "1024", body
    assert int(str(body["data-widest-table"])) > 1024  # the table really is wider than the window
    assert int(str(body["data-page-overflow"])) <= 0, f"the page scrolls sideways: {body}"
