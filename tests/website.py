"""Shared by the website tests: where the built site is, and which pages it must have."""

from notebook_checks import ROOT, chapter_paths, colab_url

HTML = ROOT / "_build" / "html"
PROSE_PAGES = ["book/intro", "book/setup", "book/instructor_guide", "book/results", "book/references"]
CHAPTER_PAGES = [f"notebooks/{p.stem}" for p in chapter_paths()]


def built(page):
    path = HTML / f"{page}.html"
    assert path.exists(), f"{path} is missing: run `make test` (or `make book`) first"
    return path


def expected_colab_link(page):
    return colab_url(f"{page}.ipynb")
