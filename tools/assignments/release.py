"""``release``: the student notebooks (nbgrader generate_assignment), committed under student/."""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

import nbformat

from .common import CHAPTER_RE, CHAPTERS, STUDENT, build_course, chapter_notebooks

STUDENT_NOTE = (
    "\n\n> **Student version.** The exercises at the end of this notebook are yours to solve: "
    "replace each `raise NotImplementedError()` with your code, then run the test cell below it. "
    "When grading, your instructor runs further (hidden) tests. Do not delete, split or reorder "
    "the exercise cells."
)


def student_version(released: Path, stem: str, dest_dir: str = "student") -> str:
    """nbgrader's release notebook, with the Colab badge pointing at the student copy."""
    nb = nbformat.read(released, as_version=4)
    title = nb.cells[0]
    pattern = re.compile(r"(colab\.research\.google\.com/github/[^)\s]*?/blob/[^/)\s]+/)notebooks/"
                         + re.escape(stem) + r"\.ipynb")
    if title.cell_type == "markdown" and pattern.search(title.source):
        title.source = pattern.sub(rf"\g<1>{dest_dir}/{stem}.ipynb", title.source) + STUDENT_NOTE
    return nbformat.writes(nb) + "\n"


def release(source: Path = CHAPTERS, out: Path = STUDENT, only: list[str] | None = None,
            check: bool = False) -> tuple[list[str], dict[str, str]]:
    """Write (or with ``check``, compare) the student notebooks.

    Returns the files that differ (written, unless ``check``) and the chapters that failed.
    """
    chapters = chapter_notebooks(source, only)
    out = Path(out)
    differ = []
    with tempfile.TemporaryDirectory(prefix="release-") as tmp:
        released, errors = build_course(Path(tmp), chapters)
        for stem, path in released.items():
            text = student_version(path, stem, out.name)
            target = out / f"{stem}.ipynb"
            if not target.exists() or target.read_text(encoding="utf-8") != text:
                differ.append(str(target))
                if not check:
                    out.mkdir(parents=True, exist_ok=True)
                    target.write_text(text, encoding="utf-8")
    if only is None and out.exists():  # student copies of chapters that no longer exist
        for stale in sorted(out.glob("*.ipynb")):
            if CHAPTER_RE.match(stale.stem) and stale.stem not in chapters:
                differ.append(str(stale))
                if not check:
                    stale.unlink()
    return differ, errors
