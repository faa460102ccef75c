"""The exercises as students receive them. The build runs, after each chapter and in the same
kernel, the student version's exercise section (solutions stubbed) with the instructor's test
cells (tools/build.py, student_check_cells): here each chapter's outcome is read, and the check is
shown to catch a test cell that fails on the stub for another reason than the stub."""

import nbformat
import pytest

from notebook_checks import chapter_paths, read
from tools import build

CHAPTERS = chapter_paths()


def graded_ids(nb):
    return {build.nbgrader_meta(c)["grade_id"] for c in nb.cells
            if build.nbgrader_meta(c).get("grade") and not build.nbgrader_meta(c).get("solution")}


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_every_stub_fails_only_with_not_implemented_error(path):
    executed = build.RUN_DIR / path.stem / path.name
    assert executed.exists(), "run `make test` (tools/build.py --schedule ci) first"
    ran = read(executed)
    assert build.student_check_problems(ran) == []
    checked = graded_ids(nbformat.from_dict({"cells": [c for c in ran.cells
                                                        if build.is_student_check(c)]}))
    assert checked == graded_ids(read(path)), "every autograded exercise was checked"


def chapter_with_exercise(folder, stem, test_source):
    """A one-exercise chapter and its student version, as tools.assignments would release it."""
    meta = lambda **kw: {"nbgrader": {"schema_version": 3, "task": False, **kw}}  # noqa: E731
    solution = nbformat.v4.new_code_cell(
        "def double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION",
        metadata=meta(grade=False, grade_id="double_solution", locked=False, solution=True))
    test = nbformat.v4.new_code_cell(
        test_source, metadata=meta(grade=True, grade_id="double_tests", locked=True, points=1,
                                   solution=False))
    chapter = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Doubling"), nbformat.v4.new_code_cell("import math"),
        nbformat.v4.new_markdown_cell("## Exercises"), solution, test])
    student = nbformat.from_dict(nbformat.reads(nbformat.writes(chapter), as_version=4))
    student.cells[3].source = "def double(x):\n    raise NotImplementedError()"
    student.cells[4].source = test_source.split("### BEGIN HIDDEN TESTS")[0]
    for sub in ("notebooks", "student"):
        (folder / sub).mkdir(exist_ok=True)
    nbformat.write(chapter, folder / "notebooks" / f"{stem}.ipynb")
    nbformat.write(student, folder / "student" / f"{stem}.ipynb")
    return folder / "notebooks" / f"{stem}.ipynb"


# Test cells of the one-exercise chapter, and whether the student check must object to them.
TEST_CELLS = {
    "98_fair": ("assert double(2) == 4\n### BEGIN HIDDEN TESTS\nassert double(3) == 6\n"
                "### END HIDDEN TESTS", False),
    # Passes with the solution; on the stub it swallows NotImplementedError and fails with an
    # AssertionError, which the autograder would report instead of "not implemented".
    "98_swallows": ("try:\n    out = double(2)\nexcept Exception:\n    out = None\n"
                    "assert out == 4\n### BEGIN HIDDEN TESTS\nassert double(3) == 6\n"
                    "### END HIDDEN TESTS", True),
}


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    """Both one-exercise chapters staged with their student check and executed in one run."""
    folder = tmp_path_factory.mktemp("student-check")
    paths = [chapter_with_exercise(folder, stem, source)
             for stem, (source, _) in TEST_CELLS.items()]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(build, "STUDENT_DIR", folder / "student")
        build.stage_runs(paths, "ci", folder / "run")
    return folder / "run", build.execute("ci", 1, folder / "run")


@pytest.mark.parametrize("stem", TEST_CELLS)
def test_student_check_catches_a_test_that_fails_for_another_reason(demo_runs, stem):
    run_dir, passed = demo_runs
    assert stem in passed, "test cells may raise; the run passes"
    problems = build.student_check_problems(read(run_dir / stem / f"{stem}.ipynb"))
    assert bool(problems) == TEST_CELLS[stem][1], problems
