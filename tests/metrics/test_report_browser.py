"""report.html opened by a real browser: headless Chromium (Debian's ``chromium``) loads the page
with no server, every image (curves and grids) decodes, and a screenshot is saved (slow tier).
The default tier checks the same page without a browser: parsed by html.parser, every image
decoded by PIL, the metrics table's values read back."""

import html
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium (apt-get install chromium)")

# appended to a copy of the page, next to it so relative image paths resolve as in the original
PROBE = """
<script>
window.addEventListener("load", () => {
  const imgs = [...document.images].map(i => ({src: i.getAttribute("src"), cls: i.className,
                                               ok: i.complete && i.naturalWidth > 0}));
  const tables = [...document.querySelectorAll("table")].map(t => ({
    head: [...t.querySelectorAll("thead th")].map(th => th.textContent),
    rows: [...t.querySelectorAll("tbody tr")].map(tr => [...tr.cells].map(td => td.textContent)),
    shown: t.getBoundingClientRect().height > 0}));
  const box = e => { const r = e.getBoundingClientRect(); return {left: r.left, right: r.right, top: r.top}; };
  const headline = document.getElementById("headline");
  const heads = [...document.querySelectorAll("table.metrics thead th")];
  const layout = {width: window.innerWidth, headline: headline ? box(headline) : null,
                  headlineText: headline ? headline.textContent : "", lastColumn: heads.length ? box(heads.at(-1)) : null};
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({imgs, tables, layout});
  document.body.appendChild(out);
});
</script>
"""


def _chromium(*args, timeout=120):
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                           "--virtual-time-budget=10000", *args], capture_output=True, text=True, timeout=timeout)


class _Page(HTMLParser):
    """What the probe script reads in the browser: images (src, class) and tables (head, rows)."""

    def __init__(self):
        super().__init__()
        self.imgs, self.tables, self._cell, self._where = [], [], None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.imgs.append({"src": attrs.get("src"), "cls": attrs.get("class", "")})
        elif tag == "table":
            self.tables.append({"head": [], "rows": []})
        elif tag in ("thead", "tbody"):
            self._where = tag
        elif tag == "tr" and self._where == "tbody":
            self.tables[-1]["rows"].append([])
        elif tag in ("th", "td"):
            self._cell = []

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("th", "td") and self._cell is not None:
            text, self._cell = "".join(self._cell), None
            if self._where == "thead":
                self.tables[-1]["head"].append(text)
            elif self._where == "tbody":
                self.tables[-1]["rows"][-1].append(text)
        elif tag in ("thead", "tbody"):
            self._where = None


def _check_table(table, rows):
    assert table["head"][0] == "generation"
    assert [r[0] for r in table["rows"]] == [str(r["generation"]) for r in rows] == ["0", "1"]
    for key in ("fd_classifier", "memorization", "entropy"):
        assert key in table["head"], key
        cells = [r[table["head"].index(key)] for r in table["rows"]]
        assert all(float(c) == pytest.approx(r[key], rel=1e-3) for c, r in zip(cells, rows)), (key, cells)


def test_report_parses_and_every_image_decodes_without_a_browser(finished_run):
    """The browser test's checks that need no browser (it runs in the slow tier)."""
    from PIL import Image

    parser = _Page()
    parser.feed((finished_run / "report.html").read_text())
    curves = [i for i in parser.imgs if i["cls"] == "curve"]
    grids = [i for i in parser.imgs if i["cls"] == "grid"]
    assert len(curves) >= 2 and len(grids) >= 3  # the real row and 2 generations
    for img in parser.imgs:
        path = finished_run / img["src"]
        assert not img["src"].startswith(("/", "http:", "https:", "file:")) and path.is_file(), img["src"]
        with Image.open(path) as im:
            im.load()  # decodes the whole file
            assert im.width > 0 and im.height > 0, img["src"]
    table = parser.tables[-1]  # the run facts, then the metrics
    rows = [json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()]
    _check_table(table, rows)
    page = (finished_run / "report.html").read_text()
    # the headline before the table, with the direction; bookkeeping only in the table, not as curves
    assert page.index('id="headline"') < page.index('class="metrics"')
    assert "lower is better" in page and ("fd_classifier rose from" in page or "fd_classifier fell from" in page)
    assert not any(i["src"].endswith(("num_train_images.png", "num_skipped_files.png")) for i in curves)
    assert "commit" in page and "seconds per stage" in page


@pytest.mark.slow  # the default tier parses the same page without a browser (above)
@needs_chromium
def test_report_loads_every_image_and_screenshots(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    page = (run / "report.html").read_text()
    probe = run / "report_probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    proc = _chromium("--dump-dom", "--window-size=1200,1600", probe.as_uri())
    match = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert match, proc.stderr[-2000:]
    probed = json.loads(html.unescape(match.group(1)))
    images = probed["imgs"]
    curves = [i for i in images if i["cls"] == "curve"]
    grids = [i for i in images if i["cls"] == "grid"]
    assert len(curves) >= 2 and len(grids) >= 3  # the real row and 2 generations
    broken = [i["src"] for i in images if not i["ok"]]
    assert not broken, f"images that did not load: {broken}"
    # the metrics table as the browser laid it out: one row per generation, values as in metrics.jsonl
    table = probed["tables"][-1]  # the run facts, then the metrics
    assert table["shown"] and table["head"][0] == "generation"
    # what a screenshot at 1200 x 1600 shows: the headline with the Fréchet distance, and the table's last column
    layout = probed["layout"]
    assert layout["width"] == 1200 and "fd_classifier" in layout["headlineText"]
    assert 0 <= layout["headline"]["top"] < 1600 and layout["headline"]["right"] <= 1200
    assert layout["lastColumn"]["right"] <= 1200 and layout["lastColumn"]["top"] < 1600
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    _check_table(table, rows)

    shot = tmp_path / "report.png"
    proc = _chromium(f"--screenshot={shot}", "--window-size=1200,1600", (run / "report.html").as_uri())
    assert shot.exists() and shot.stat().st_size > 10_000, proc.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1200, 1600)
        assert len(set(im.convert("L").resize((60, 80)).getdata())) > 5  # not a blank page
