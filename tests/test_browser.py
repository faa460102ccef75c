"""The website as readers see it: Debian's Chromium, driven by Playwright, against the built site
served on 127.0.0.1. Nothing may come from the network except the Colab badge image that
notebooks show to Colab and GitHub readers; every other outside request is refused and reported."""

import functools
import http.server
import shutil
import threading
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from notebook_checks import ROOT
from website import CHAPTER_PAGES, HTML, PROSE_PAGES, built, expected_colab_link

CHROMIUM = "/usr/bin/chromium"  # Debian's package; Playwright never downloads a browser here
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ALLOWED_EXTERNAL = {"https://colab.research.google.com/assets/colab-badge.svg"}
SCREENSHOTS = ROOT / "_build" / "screenshots"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@functools.cache
def serve(directory):
    """Serve a folder on 127.0.0.1 (a free port) for the rest of the session; returns its URL."""
    handler = functools.partial(QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/"


@pytest.fixture(scope="session")
def browser():
    assert Path(CHROMIUM).exists(), "browser tests need Debian's chromium: apt-get install chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


def open_page(browser, url):
    """Load a page, wait for MathJax, and return (page, problems seen while loading)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    base = url.split("/", 3)[:3]
    problems = []

    def route(request_route):
        request_url = request_route.request.url
        if request_url.split("/", 3)[:3] == base:
            request_route.continue_()
            return
        if request_url not in ALLOWED_EXTERNAL:
            problems.append(f"requested from outside the site: {request_url}")
        request_route.abort()

    def console(message):
        source = message.location.get("url", "")
        if message.type == "error" and source not in ALLOWED_EXTERNAL:
            problems.append(f"console error: {message.text} ({source})")

    page.route("**/*", route)
    page.on("console", console)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.goto(url, wait_until="load")
    page.evaluate("async () => { if (window.MathJax && MathJax.startup) await MathJax.startup.promise; }")
    return page, problems


VISIBLE_PROSE_JS = """() => {
    const copy = document.querySelector('article').cloneNode(true);
    copy.querySelectorAll('pre, code, .highlight, mjx-container, script').forEach(e => e.remove());
    return copy.textContent;
}"""


def chapter_problems(browser, url, colab_link):
    """Everything a reader would notice on a chapter page, as a list of problems."""
    page, problems = open_page(browser, url)
    try:
        if page.locator("mjx-container").count() == 0:
            problems.append("no typeset math (MathJax output missing)")
        prose = page.evaluate(VISIBLE_PROSE_JS)
        for raw in ["$$", "\\begin{", "\\frac"]:
            if raw in prose:
                problems.append(f"raw TeX {raw!r} left in the page")
        figures = page.locator(".cell_output img")
        loaded = [figures.nth(i).evaluate("img => img.complete && img.naturalWidth > 0") for i in range(figures.count())]
        if not any(loaded):
            problems.append("no rendered figure")
        links = page.eval_on_selector_all("a[href*='colab.research.google.com/github']", "as => as.map(a => a.href)")
        if colab_link not in links:
            problems.append(f"no Colab link to {colab_link}")
    finally:
        page.close()
    return problems


@pytest.mark.parametrize("page", CHAPTER_PAGES)
def test_chapter_page_reads_well(browser, page):
    built(page)
    url = serve(HTML) + f"{page}.html"
    assert chapter_problems(browser, url, expected_colab_link(page)) == []


@pytest.mark.parametrize("page", PROSE_PAGES)
def test_prose_page_loads_cleanly(browser, page):
    built(page)
    loaded, problems = open_page(browser, serve(HTML) + f"{page}.html")
    loaded.close()
    assert problems == []


def test_a_broken_page_is_caught(browser, tmp_path):
    """A copy of the site with one chapter broken: math left untypeset and a script error."""
    page = CHAPTER_PAGES[0]
    site = tmp_path / "site"
    shutil.copytree(HTML, site)
    html_file = site / f"{page}.html"
    html = html_file.read_text()
    assert "mathjax/tex-chtml.js" in html
    html = html.replace("mathjax/tex-chtml.js", "mathjax/missing.js")
    html = html.replace("</body>", "<script>notDefinedAnywhere();</script></body>")
    html_file.write_text(html)
    problems = chapter_problems(browser, serve(site) + f"{page}.html", expected_colab_link(page))
    assert any("typeset math" in p for p in problems)
    assert any("notDefinedAnywhere" in p for p in problems)
    assert any("console error" in p for p in problems)  # the missing MathJax file: a 404


def test_table_of_contents_links_every_chapter_in_order(browser):
    loaded, problems = open_page(browser, serve(HTML) + "book/intro.html")
    entries = loaded.eval_on_selector_all(
        "nav.bd-docs-nav a.reference.internal",
        "as => as.map(a => [a.getAttribute('href'), a.textContent.trim()])",
    )
    loaded.close()
    chapters = [(href, text) for href, text in entries if "notebooks/" in href]
    assert [href.split("notebooks/")[1].removesuffix(".html") for href, _ in chapters] == [
        p.split("/")[1] for p in CHAPTER_PAGES
    ]
    # Chapters are numbered on the website (the notebooks' own titles carry no number).
    assert [text.split(".")[0] for _, text in chapters] == [str(i) for i in range(1, len(CHAPTER_PAGES) + 1)]
    assert problems == []


def test_chapters_have_previous_and_next_links(browser):
    page = CHAPTER_PAGES[0]
    loaded, _ = open_page(browser, serve(HTML) + f"{page}.html")
    assert loaded.locator("a.left-prev").count() == 1 and loaded.locator("a.right-next").count() == 1
    assert loaded.locator(".copybtn").count() > 0, "code cells have copy buttons"
    loaded.close()


def test_search_finds_a_term_from_a_chapter(browser):
    loaded, problems = open_page(browser, serve(HTML) + "search.html?q=broadcasting")
    loaded.wait_for_selector("#search-results ul.search li", timeout=30_000)
    hits = loaded.eval_on_selector_all("#search-results ul.search li a", "as => as.map(a => a.getAttribute('href'))")
    loaded.close()
    assert any("notebooks/01_tensors" in h for h in hits), hits
    assert problems == []


def test_figures_stay_readable_in_dark_mode(browser):
    page = CHAPTER_PAGES[0]
    loaded, _ = open_page(browser, serve(HTML) + f"{page}.html")
    loaded.evaluate("document.documentElement.dataset.theme = 'dark'")
    background = loaded.locator(".cell_output img").first.evaluate("img => getComputedStyle(img).backgroundColor")
    loaded.close()
    assert background == "rgb(255, 255, 255)"


def test_results_tables_need_no_sideways_scrolling(browser):
    """At 1,280 px, as the issue asked: every table of the results page fits its column."""
    loaded, problems = open_page(browser, serve(HTML) + "book/results.html")
    sizes = loaded.eval_on_selector_all(
        "article table", "ts => ts.map(t => [t.scrollWidth, t.parentElement.clientWidth])")
    figure = loaded.locator("article img").first.evaluate("img => img.naturalWidth > 0")
    loaded.close()
    assert len(sizes) == 2 and all(table <= box for table, box in sizes), sizes
    assert figure and problems == []


def test_screenshots(browser):
    """Saved as artefacts for a person to look at: the landing page and one chapter."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for name, page in [("landing", "book/intro"), ("chapter", CHAPTER_PAGES[0]),
                       ("results", "book/results")]:
        loaded, _ = open_page(browser, serve(HTML) + f"{page}.html")
        target = SCREENSHOTS / f"{name}.png"
        loaded.screenshot(path=str(target))
        loaded.close()
        assert target.stat().st_size > 10_000
