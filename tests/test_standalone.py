"""Notebooks run alone in an empty folder: the build's runner (tools/build.py) is shown to catch a
notebook that only works next to the repository's other files."""

import nbformat
import pytest

from notebook_checks import ROOT, chapter_paths, read
from tools import build

CHAPTERS = chapter_paths()


@pytest.fixture(scope="module")
def runner_outcome(tmp_path_factory):
    """Two tiny notebooks, staged and executed by the build's own runner in one run: one stands
    alone, the other reads a file of the repository (it works in place, since notebooks/ sits
    next to _config.yml, but not from an empty folder). Returns the stems that passed."""
    tmp_path = tmp_path_factory.mktemp("standalone")
    assert (ROOT / "notebooks" / ".." / "_config.yml").exists()
    cells = {
        "00_alone": 'import sys\nprint(sys.version)',
        "00_needs_repository": 'print(open("../_config.yml").read()[:20])',
    }
    sources = []
    for stem, code in cells.items():
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# {stem}"),
                                             nbformat.v4.new_code_cell(code)])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                     "language": "python"}
        sources.append(tmp_path / "src" / f"{stem}.ipynb")
        sources[-1].parent.mkdir(exist_ok=True)
        nbformat.write(nb, sources[-1])
    run_dir = tmp_path / "run"
    build.stage_runs(sources, "ci", run_dir, student_check=False)
    for source in sources:
        staged = sorted(p.name for p in (run_dir / source.stem).iterdir())
        assert staged == [source.name], "each notebook is staged alone in its own folder"
    return build.execute("ci", 1, run_dir)


def test_runner_passes_a_notebook_that_stands_alone(runner_outcome):
    assert "00_alone" in runner_outcome


def test_runner_fails_a_notebook_that_needs_repository_files(runner_outcome):
    assert "00_needs_repository" not in runner_outcome


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
