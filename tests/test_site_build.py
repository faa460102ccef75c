"""The rendered website, read as files: every page is there, executed, and needs no CDN."""

import json
import re
from html import unescape

import pytest

from notebook_checks import chapter_paths
from tools import build
from website import CHAPTER_PAGES, HTML, PROSE_PAGES, built, expected_colab_link


@pytest.mark.parametrize("page", PROSE_PAGES + CHAPTER_PAGES)
def test_page_is_built(page):
    assert built(page).stat().st_size > 0


@pytest.mark.parametrize("page", CHAPTER_PAGES)
def test_chapter_page_has_executed_outputs_figures_and_colab_button(page):
    html = built(page).read_text()
    assert html.count('class="cell_output') >= 5, "the chapter was not executed before rendering"
    assert re.search(r'<img[^>]+src="[^"]*(_images/|data:image/png)', html), "no rendered figure"
    assert f'href="{expected_colab_link(page)}"' in html, "no Colab button for this notebook"
    assert f"../_sources/{page}.ipynb" in html, "no download button for the .ipynb"


@pytest.mark.parametrize("page", PROSE_PAGES + CHAPTER_PAGES)
def test_page_loads_nothing_from_a_cdn(page):
    html = built(page).read_text()
    external_scripts = re.findall(r'<script[^>]+src="(https?:[^"]+)"', html)
    external_styles = re.findall(r'<link[^>]+href="(https?:[^"]+\.css[^"]*)"', html)
    assert external_scripts == [] and external_styles == []
    if "$" in html or "math" in html:
        assert (HTML / "_static" / "mathjax" / "tex-chtml.js").exists()


def table_rows(html):
    """The text of each cell of each body row of the page's first table."""
    table = re.search(r"<table.*?</table>", html, re.DOTALL).group(0)
    body = re.search(r"<tbody>(.*?)</tbody>", table, re.DOTALL).group(1)
    text = lambda cell: unescape(re.sub(r"<[^>]+>", "", cell)).strip()  # noqa: E731
    return [[text(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.DOTALL)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.DOTALL)]


def test_results_page_has_a_row_per_chapter_from_the_recorded_numbers():
    html = built("book/results").read_text()
    assert build.RESULTS_MARKER not in html
    expected = []  # (chapter title, metric, value, schedule) in page order
    for path in chapter_paths():
        recorded = json.loads((build.RESULTS_DIR / f"{path.stem}.json").read_text())
        for r in recorded["results"] or [None]:
            if r is None:
                expected.append((recorded["title"], "", "", recorded["schedule"]))
            else:
                value = r["value"]
                shown = f"{value:.4g}" if isinstance(value, (int, float)) else str(value)
                expected.append((recorded["title"], r["metric"], shown, recorded["schedule"]))
    rows = table_rows(html)
    assert [(row[0], row[2], row[3], row[6]) for row in rows] == expected
