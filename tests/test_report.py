"""`snakemake --report` on a complete demo run: a self-contained HTML file with the summary
table (every task's metrics and chance), the method comparison, every loss curve, the ablation
table and the word-region alignment pictures, that opens in headless Chromium (screenshots and
rendered pages checked)."""

import base64
import csv
import io
import os
import re
import shutil
import subprocess

import pytest
from PIL import Image

from workflow_run import snakemake

TRAINED_TASKS = ["vqa", "vcr", "nlvr2", "rpg", "tir"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def report(demo_run, tmp_path_factory):
    """Path of report.html made from the demo run (the run's folder is only read)."""
    path = tmp_path_factory.mktemp("report") / "report.html"
    result = snakemake(demo_run, "--report", str(path), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return path


def embedded_files(html):
    """{path in the run folder: bytes} of every result the report embeds as a data URI."""
    files = {}
    pattern = r'"(results/[^"]+)": \{"name": .*?"data_uri": "data:[^;,]+;[^,]*?base64,([A-Za-z0-9+/=]+)"'
    for path, data in re.findall(pattern, html):
        files[path] = base64.b64decode(data)
    return files


def test_report_embeds_summary_methods_and_curves(report, demo_run, demo_metrics):
    html = report.read_text()
    files = embedded_files(html)
    expected = ["results/summary.html", "results/summary.csv", "results/methods.csv", "results/summary.png",
                "results/pretrain/curves.png", *(f"results/{t}/curves.png" for t in TRAINED_TASKS),
                "results/ablations/summary.html", "results/ablations/summary.png", "results/visualisation.html"]
    assert sorted(files) == sorted(expected)
    for path in expected:  # byte for byte what the run wrote
        assert files[path] == (demo_run / path).read_bytes(), path

    # The summary table holds every metric and chance level of every task.
    rows = {(r["task"], r["metric"]): r for r in csv.DictReader(io.StringIO(files["results/summary.csv"].decode()))}
    assert {task for task, _ in rows} == set(demo_metrics) == {*TRAINED_TASKS, "zs_tir"}
    for task, record in demo_metrics.items():
        for metric, value in record["metrics"].items():
            row = rows[task, metric]
            assert float(row["value"]) == pytest.approx(value, abs=1e-4)
            assert float(row["chance"]) == pytest.approx(record["chance"][metric], abs=1e-4)
            assert row["method"] == record["method"]

    # The page the report shows inline has one row per task and metric, and the method table.
    page = files["results/summary.html"].decode()
    for task, record in demo_metrics.items():
        for metric in record["metrics"]:
            assert f"<tr><td>{task}</td><td>{record['split']}</td><td>{record['method']}</td><td>{metric}</td>" \
                in page.replace("&#x27;", "'"), (task, metric)
    assert "<h2>Finetuning methods</h2>" in page

    methods = {r["task"]: r for r in csv.DictReader(io.StringIO(files["results/methods.csv"].decode()))}
    assert set(methods) == set(demo_metrics)
    for task in TRAINED_TASKS:  # every trained task has its trainable share and speed
        assert 0 < float(methods[task]["trainable_pct"]) < 100
        assert float(methods[task]["step_s"]) > 0

    # Self-contained: captions and categories inline, nothing fetched from elsewhere.
    assert "1. Results" in html and "2. Pretraining" in html and "3. Finetuning" in html
    assert "4. Ablations" in html and "5. Word-region alignment" in html

    # The analyses' pages: the ablation table with every variant, the alignment page with its
    # pictures embedded (the report holds single files, so the page carries them as data URIs).
    ablations = files["results/ablations/summary.html"].decode()
    for variant in ("baseline", "mlm", "mlm_itm", "batch_32", "adapter1"):
        assert f"<td>{variant}</td>" in ablations, variant
    alignment = files["results/visualisation.html"].decode()
    # at least the first image of each dataset: COCO's three pictures, Flickr30k's four
    assert alignment.count('<img src="data:image/png;base64,') >= 7 and "Flickr30k Entities phrases" in alignment
    assert "majority-answer) predictor on the same split" in html  # the summary caption
    assert not re.search(r'<(script|link|img)[^>]+(src|href)="(https?:)?//', html)


# Shows the summary page the way clicking it in the report's Results menu does, through the
# report's own view functions (`app`, `results` are its globals).
SHOW_PAGE = """<script>
window.addEventListener("load", () => setTimeout(() => {
  const path = "PATH";
  app.showCategory("CATEGORY");
  app.setView({content: "html", contentPath: results[path].data_uri, resultPath: path});
}, 200));
</script>
"""


def show_page(report, tmp_path, path, category):
    """A copy of the report that opens the page `path` on load; returns its DOM (the page in an
    iframe of its embedded data) after checking its screenshot is not blank."""
    view = tmp_path / f"report_{category[0]}.html"
    html = report.read_text()
    end = html.rindex("</body>")
    view.write_text(html[:end] + SHOW_PAGE.replace("PATH", path).replace("CATEGORY", category) + html[end:])
    dom = chromium(tmp_path, "--dump-dom", view.as_uri())
    assert re.search(r'<iframe[^>]+src="data:text/html', dom), dom[-2000:]
    chromium(tmp_path, f"--screenshot={tmp_path / view.with_suffix('.png').name}", view.as_uri())
    assert_not_blank(tmp_path / view.with_suffix(".png").name)
    return dom


def chromium(tmp_path, *args):
    """Run headless Chromium (--no-sandbox: CI runs as root; its own profile keeps runs apart)."""
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
               "--window-size=1400,1000", "--hide-scrollbars", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


SIDEBAR_PX = 280  # the report's navigation column, left of the page content


def assert_not_blank(path):
    """The page content (right of the sidebar) has text or drawing on it. Ink, not "differs from
    the background": the sidebar's fill fades in, so it is grey in some screenshots and white in
    others (measured on the demo report: 3.6 % vs 20 % of the page off-white, same content)."""
    image = Image.open(path).convert("RGB")
    assert image.size == (1400, 1000)
    assert len(image.getcolors(maxcolors=1 << 20)) > 50, path  # anti-aliased text, not a flat fill
    content = image.crop((SIDEBAR_PX, 0, image.width, image.height)).convert("L")
    ink = sum(count for count, level in content.getcolors(256) if level < 160)  # dark text and lines
    # Demo report: ~17,000 ink pixels on the front page, ~39,400 on the summary; blank: 0.
    assert ink > 0.005 * image.width * image.height, (path, ink)


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CAVL_REQUIRE_CHROMIUM"),
                    reason="chromium is not installed (Debian package `chromium`; .ci/run installs it)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    assert CHROMIUM, "CAVL_REQUIRE_CHROMIUM is set but chromium is not installed"
    # The page's script renders the navigation and the workflow description from the embedded data.
    dom = chromium(tmp_path, "--dump-dom", report.as_uri())
    for text in ("1. Results", "2. Pretraining", "3. Finetuning", "4. Ablations", "5. Word-region alignment",
                 "Contrastive and Adaptive"):
        assert text in dom, text
    chromium(tmp_path, f"--screenshot={tmp_path / 'report.png'}", report.as_uri())
    assert_not_blank(tmp_path / "report.png")

    # The summary, the ablation table and the alignment pictures open inside the report.
    show_page(report, tmp_path, "results/summary.html", "1. Results")
    show_page(report, tmp_path, "results/ablations/summary.html", "4. Ablations")
    show_page(report, tmp_path, "results/visualisation.html", "5. Word-region alignment")


def test_blank_screenshot_is_rejected(tmp_path):
    """The screenshot check fails on a page that rendered nothing, with or without the grey sidebar."""
    blank = Image.new("RGB", (1400, 1000), "white")
    for x in range(SIDEBAR_PX):  # a light sidebar fill in many shades, so only the ink check is left
        blank.paste((200 + x % 56, 201 + x % 54, 203 + x % 52), (x, 0, x + 1, 1000))
    blank.save(tmp_path / "blank.png")
    with pytest.raises(AssertionError, match=r"blank.png'\), 0\)"):
        assert_not_blank(tmp_path / "blank.png")
