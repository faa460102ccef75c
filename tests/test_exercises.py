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


def chapter_with_exercise(tmp_path, test_source):
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
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "student").mkdir()
    nbformat.write(chapter, tmp_path / "notebooks" / "98_double.ipynb")
    nbformat.write(student, tmp_path / "student" / "98_double.ipynb")
    return tmp_path / "notebooks" / "98_double.ipynb"


@pytest.mark.parametrize("test_source, caught", [
    ("assert double(2) == 4\n### BEGIN HIDDEN TESTS\nassert double(3) == 6\n### END HIDDEN TESTS",
     False),
    # Passes with the solution; on the stub it swallows NotImplementedError and fails with an
    # AssertionError, which the autograder would report instead of "not implemented".
    ("try:\n    out = double(2)\nexcept Exception:\n    out = None\nassert out == 4\n"
     "### BEGIN HIDDEN TESTS\nassert double(3) == 6\n### END HIDDEN TESTS", True),
])
def test_student_check_catches_a_test_that_fails_for_another_reason(
        tmp_path, monkeypatch, test_source, caught):
    path = chapter_with_exercise(tmp_path, test_source)
    monkeypatch.setattr(build, "STUDENT_DIR", tmp_path / "student")
    run_dir = tmp_path / "run"
    build.stage_runs([path], "ci", run_dir)
    assert build.execute("ci", 1, run_dir) == {path.stem}, "test cells may raise; the run passes"
    problems = build.student_check_problems(read(run_dir / path.stem / path.name))
    assert bool(problems) == caught, problems
