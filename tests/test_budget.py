"""CI's time budget (CONTRIBUTING.md): each chapter's CI schedule takes at most
build.CI_SECONDS_PER_CHAPTER seconds, two notebooks side by side on two cores. The test fails
when a chapter exceeds it by a clear margin, so that a chapter is sized for it when written."""

import pytest

from notebook_checks import chapter_paths, read
from tools import build

CHAPTERS = chapter_paths()
MARGIN = 1.5  # machines differ; a chapter half again over budget is over on any of them


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_ci_schedule_fits_the_budget(path):
    executed = build.RUN_DIR / path.stem / path.name
    assert executed.exists(), "run `make test` (tools/build.py --schedule ci) first"
    nb = read(executed)
    parameters = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    if "mock" not in parameters.metadata.get("nbmake", {}):
        pytest.skip("this run used the full schedule (make book)")
    seconds = build.notebook_seconds(nb)
    assert seconds is not None, "no execution timestamps in the executed notebook"
    limit = MARGIN * build.CI_SECONDS_PER_CHAPTER
    assert seconds <= limit, (f"{path.stem} took {seconds:.0f} s on its CI schedule; the budget "
                              f"is {build.CI_SECONDS_PER_CHAPTER} s (failing above {limit:.0f} s)")
