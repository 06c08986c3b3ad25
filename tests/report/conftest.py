"""A real headless browser (Debian's ``chromium``) for the report tests, and a parser of the DOM it dumps."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

#: Flags of every run: headless, as root in a container (no sandbox), no GPU, nothing from the network.
BASE_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-extensions",
              "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


@dataclass
class Browser:
    """Runs ``chromium`` on a local file: the DOM after the page's scripts ran, or a screenshot."""

    exe: str
    profile: Path

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [self.exe, *BASE_FLAGS, f"--user-data-dir={self.profile}", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}"
        return proc

    def dump_dom(self, page: Path, width: int | None = None) -> str:
        """The serialized DOM of ``page`` after its load handlers ran (``--dump-dom``), in a window ``width`` px wide."""
        size = [f"--window-size={width},900"] if width else []
        out = self._run(*size, "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri()).stdout
        assert "<html" in out, f"chromium dumped no DOM for {page}: {out[:500]!r}"
        return out

    def screenshot(self, page: Path, dest: Path, size: tuple[int, int] = (1280, 2400)) -> Path:
        """A PNG screenshot of ``page`` (``--screenshot``) at ``size`` (width, height)."""
        self._run(f"--window-size={size[0]},{size[1]}", "--virtual-time-budget=5000", f"--screenshot={dest}",
                  page.resolve().as_uri())
        assert dest.is_file() and dest.stat().st_size > 0, f"chromium wrote no screenshot to {dest}"
        return dest


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Browser:
    """Debian's chromium; the tests FAIL (not skip) without it: CI installs it from .ci/apt-packages.d/report.txt."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("the report tests need a real headless browser: apt-get install chromium "
                    "(listed in .ci/apt-packages.d/report.txt, which setup.sh installs)")
    return Browser(exe, tmp_path_factory.mktemp("chromium-profile"))


@dataclass
class Dom:
    """What the tests read from a dumped DOM: tables (cell texts, row classes), images, ``<body>`` data."""

    tables: list[list[list[str]]] = field(default_factory=list)
    row_classes: list[list[str]] = field(default_factory=list)
    images: list[dict[str, str | None]] = field(default_factory=list)
    body: dict[str, str | None] = field(default_factory=dict)
    title: str = ""
    text: str = ""


class _DomParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.dom = Dom()
        self._cell: list[str] | None = None
        self._in_title = False
        self._chunks: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self.dom.tables.append([])
            self.dom.row_classes.append([])
        elif tag == "tr" and self.dom.tables:
            self.dom.tables[-1].append([])
            self.dom.row_classes[-1].append(a.get("class") or "")
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.dom.images.append(a)
        elif tag == "body":
            self.dom.body = a
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.dom.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._in_title:
            self.dom.title += data
        self._chunks.append(data)

    def close(self) -> None:
        super().close()
        self.dom.text = " ".join(self._chunks)


def parse_dom(html: str) -> Dom:
    """Tables, images, ``<body>`` attributes, title and text of an HTML document."""
    parser = _DomParser()
    parser.feed(html)
    parser.close()
    return parser.dom
