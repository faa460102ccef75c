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
    # Sphinx typesets quotes (smartquotes): compare the plain characters.
    plain = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"'})
    text = lambda cell: unescape(re.sub(r"<[^>]+>", "", cell)).strip().translate(plain)  # noqa: E731
    return [[text(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.DOTALL)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.DOTALL)]


def test_results_page_has_a_row_per_trained_model_from_the_recorded_numbers():
    html = built("book/results").read_text()
    assert build.RESULTS_MARKER not in html and build.FIGURE_MARKER not in html
    expected = []  # (chapter, model, metric, value, d2l value) in page order
    for path in chapter_paths():
        recorded = json.loads((build.RESULTS_DIR / f"{path.stem}.json").read_text())
        for r in recorded["results"]:
            d2l = build.shown(r["d2l"]["value"]) if r.get("d2l") else ""
            expected.append((path.stem[:2], build.model_label(r), r["metric"], build.shown(r["value"]),
                             d2l))
    rows = table_rows(html)
    assert [(row[0], row[1], row[2], row[3], row[5]) for row in rows] == expected


def test_results_page_shows_the_figure_drawn_from_the_same_numbers():
    html = built("book/results").read_text()
    assert re.search(rf'<img[^>]+src="[^"]*{build.FIGURE_NAME}"', html)
    assert (HTML / "_images" / build.FIGURE_NAME).exists()
    summary = [json.loads((build.RESULTS_DIR / f"{p.stem}.json").read_text()) for p in chapter_paths()]
    points = build.accuracy_points(summary)
    book = [p for p in points if p[3] == "this book"]
    assert book, "no trained model recorded an accuracy and its training time"
