"""Notebooks run alone in an empty folder: the build's runner (tools/build.py) is shown to catch a
notebook that only works next to the repository's other files."""

import nbformat
import pytest

from notebook_checks import ROOT, chapter_paths, read
from tools import build

CHAPTERS = chapter_paths()


def first_cells(path):
    """The chapter's title, setup and parameters cells: a quick notebook that still runs the setup."""
    nb = read(path)
    parameters = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells = nb.cells[: parameters + 1]
    return nb


def run_alone(nb, name, tmp_path):
    source = tmp_path / "src" / name
    source.parent.mkdir()
    nbformat.write(nb, source)
    run_dir = tmp_path / "run"
    build.stage_runs([source], "ci", run_dir, student_check=False)
    assert sorted(p.name for p in (run_dir / source.stem).iterdir()) == [name], "staged alone"
    return build.execute("ci", 1, run_dir) == {source.stem}


def test_runner_passes_a_notebook_that_stands_alone(tmp_path):
    assert run_alone(first_cells(CHAPTERS[0]), CHAPTERS[0].name, tmp_path)


def test_runner_fails_a_notebook_that_needs_repository_files(tmp_path):
    nb = first_cells(CHAPTERS[0])
    # Works when run in place (notebooks/ sits next to _config.yml), not from an empty folder.
    assert (ROOT / "notebooks" / ".." / "_config.yml").exists()
    nb.cells.append(nbformat.v4.new_code_cell('print(open("../_config.yml").read()[:20])'))
    assert not run_alone(nb, CHAPTERS[0].name, tmp_path)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_build_ran_each_chapter_alone_from_the_current_source(path):
    """`make test` executed this chapter in its own folder, from the notebook as committed."""
    executed = build.RUN_DIR / path.stem / path.name
    assert executed.exists(), "run `make test` (tools/build.py --schedule ci) first"
    ran, source = read(executed), read(path)
    chapter = [c for c in ran.cells if not build.is_student_check(c)]
    assert [c.source for c in chapter] == [c.source for c in source.cells], "executed copy is stale"
    code = [c for c in chapter if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "not every cell ran"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
