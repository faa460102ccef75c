"""Every chapter notebook follows CONTRIBUTING.md; each check is also shown to catch a broken copy."""

import copy
import re

import nbformat
import pytest
import yaml

from notebook_checks import (
    ALL_CHECKS, ROOT, chapter_paths, check_exercises, check_imports, check_no_outputs, check_plain_markdown,
    check_code_width, check_parameters_cell, check_setup_cell, check_snippets, check_title_and_badge,
    read,
)

CHAPTERS = chapter_paths()


def test_there_are_chapters():
    assert CHAPTERS, "notebooks/ holds no chapter"


def test_toc_lists_every_chapter_in_order():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    listed = [e["file"] for part in toc["parts"] for e in part.get("chapters", []) if e["file"].startswith("notebooks/")]
    assert listed == [f"notebooks/{p.stem}" for p in CHAPTERS]
    # Numbers are the syllabus's (shared/SYLLABUS.md names each file), so a chapter still being
    # written leaves a gap; they start at 01 and never repeat.
    numbers = [int(p.stem[:2]) for p in CHAPTERS]
    assert numbers[0] == 1 and numbers == sorted(set(numbers)), "chapters are 01, 02, ..., each once"
    assert all(re.fullmatch(r"\d\d_[a-z0-9_]+", p.stem) for p in CHAPTERS)


@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_follows_convention(path, check):
    assert check(read(path), path) == []


# The checks catch what they claim to catch: each is run on a deliberately broken copy.

@pytest.fixture
def chapter():
    path = CHAPTERS[0]
    return path, read(path)


def test_outputs_are_caught(chapter):
    path, nb = chapter
    broken = copy.deepcopy(nb)
    cell = next(c for c in broken.cells if c.cell_type == "code")
    cell.outputs = [{"output_type": "stream", "name": "stdout", "text": "hello\n"}]
    cell.execution_count = 1
    assert check_no_outputs(broken, path)


def test_missing_badge_is_caught(chapter):
    path, nb = chapter
    broken = copy.deepcopy(nb)
    broken.cells[0].source = re.sub(r"\[!\[Open In Colab\].*?\)\]\(.*?\)", "", broken.cells[0].source)
    assert any("badge" in p for p in check_title_and_badge(broken, path))


def test_badge_pointing_elsewhere_is_caught(chapter):
    path, nb = chapter
    broken = copy.deepcopy(nb)
    broken.cells[0].source = broken.cells[0].source.replace(path.name, "00_other.ipynb")
    assert any("badge" in p for p in check_title_and_badge(broken, path))


def test_torch_install_is_caught(chapter):
    path, nb = chapter
    broken = copy.deepcopy(nb)
    setup = next(c for c in broken.cells if c.cell_type == "code")
    setup.source = 'import sys\nif "google.colab" in sys.modules:\n    %pip install torch==2.0.0\n' + setup.source
    assert any("must not install torch" in p for p in check_setup_cell(broken, path))


def test_uninstalled_import_is_caught(chapter):
    path, nb = chapter
    broken = copy.deepcopy(nb)
    broken.cells.append(nbformat.v4.new_code_cell("import sklearn"))
    assert any("sklearn" in p for p in check_imports(broken, path))


def test_parameters_without_mock_is_caught(chapter):
    path, nb = chapter
    broken = copy.deepcopy(nb)
    for cell in broken.cells:
        cell.metadata.pop("nbmake", None)
    assert check_parameters_cell(broken, path)


def test_exercise_without_hidden_tests_is_caught(chapter):
    path, nb = chapter
    broken = copy.deepcopy(nb)
    for cell in broken.cells:
        if cell.metadata.get("nbgrader", {}).get("grade"):
            cell.source = cell.source.replace("### BEGIN HIDDEN TESTS", "").replace("### END HIDDEN TESTS", "")
            break
    assert any("hidden" in p for p in check_exercises(broken, path))


@pytest.mark.parametrize("lost", ["\text{max}", "\approx", "\rho", "\beta"])
def test_latex_lost_to_a_string_escape_is_caught(chapter, lost):
    """E.g. "\t" of "\text" became a tab, "\a" of "\approx" a bell."""
    path, nb = chapter
    broken = copy.deepcopy(nb)
    broken.cells[0].source += f"\n\n$2/\\lambda_{lost}$"
    assert any("control character" in p for p in check_plain_markdown(broken, path))


def test_display_math_line_read_as_a_list_item_is_caught(chapter):
    path, nb = chapter
    broken = copy.deepcopy(nb)
    broken.cells[0].source += "\n\n$$a = b\n+ c$$\n"
    assert any("list or quote" in p for p in check_plain_markdown(broken, path))


def test_snippet_edited_in_a_chapter_is_caught():
    path = next(p for p in CHAPTERS if check_snippets(read(p), p) == [] and "fashion_mnist(" in p.read_text())
    broken = read(path)
    cell = next(c for c in broken.cells if c.source.startswith("# Fashion-MNIST, with an offline mirror"))
    cell.source = cell.source.replace("DATA_ROOT = Path(\"data\")", "DATA_ROOT = Path(\"elsewhere\")")
    assert any("verbatim" in p for p in check_snippets(broken, path))
    broken.cells.remove(cell)
    assert any("fashion_mnist()" in p for p in check_snippets(broken, path))


def test_wide_code_line_is_caught(chapter):
    path, nb = chapter
    broken = copy.deepcopy(nb)
    broken.cells.append(nbformat.v4.new_code_cell("x = 1  # " + "a long trailing comment " * 4))
    assert any("scrolls sideways" in p for p in check_code_width(broken, path))
