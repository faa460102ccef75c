"""Classroom assignments from the book's chapters, built on nbgrader.

Every chapter notebook (``notebooks/NN_topic.ipynb``, listed in ``_toc.yml``) is an nbgrader
*source* notebook: its exercises carry nbgrader cell metadata (see CONTRIBUTING.md). This package
drives nbgrader's own converters through a throw-away course directory and gradebook; it adds no
grading logic of its own.

    python -m tools.assignments release            # student/NN_topic.ipynb for every chapter
    python -m tools.assignments release --check    # exit 1 if student/ is not up to date
    python -m tools.assignments grade SUBMISSIONS --out DIR [--chapters 01_tensors,02_autograd]
    python -m tools.assignments list               # chapters, exercise ids and points

``release`` (release.py) runs ``nbgrader generate_assignment`` (solutions replaced by a
``raise NotImplementedError()`` stub, hidden tests removed, outputs cleared, cells locked and
checksummed) and rewrites the Colab badge to point at the student copy, which is committed under
``student/`` so that its Colab link is stable. Generation is deterministic: the tests regenerate
the files and compare bytes.

``grade`` (grade.py) takes a folder of submitted notebooks, ``SUBMISSIONS/<student>.ipynb`` or
``SUBMISSIONS/<student>/<any name>.ipynb`` (any chapter; the chapter is recognised from the
exercise ids inside the notebook), and writes ``DIR/grades.csv`` (student, chapter, exercise,
points, max_points, message, file, seconds), ``DIR/feedback/<student>/`` (nbgrader's HTML
feedback per chapter and a ``summary.md``) and ``DIR/autograded/<student>/<chapter>.ipynb``.
Each submission is graded by ``nbgrader autograde`` (which re-inserts the hidden tests from the
gradebook, restores locked cells and re-adds deleted test cells) in its own process
(autograde.py, ``--jobs`` at a time); its kernel runs in a bubblewrap sandbox (sandbox.py) that
sees only a copy of the submission and the read-only Python environment, with no network and
bounded memory and processes. Submitted files are only read; scores come from nbgrader's
gradebook and autograded notebook, outside the sandbox. The chapter runs on its CI schedule (its
nbmake mocks) unless ``--schedule full``. A cell that runs longer than ``--cell-timeout`` is
interrupted and scores 0; a kernel that dies or ignores the interrupt fails the remaining cells
(earlier exercises keep their points); a submission that exceeds ``--time-limit`` as a whole is
killed with its kernel and scores 0; the others are graded regardless. Files that cannot be
graded (not JSON, not a notebook of the book, not one of the assigned chapters) get a row with a
message instead of a crash. Set ASSIGNMENTS_KEEP_WORK=1 to keep the work folders (the log of each
submission is their log.txt).
"""
from .common import (CHAPTER_RE, CHAPTERS, COURSE_ID, REPO, STUDENT, STUDENT_ID, NbgraderFailed,
                     apply_mocks, build_course, chapter_notebooks, exercise_name, exercises,
                     grade_ids, is_graded, marker_problems, mocks, nbgrader_meta, parameters_cell)
from .release import release, student_version

__all__ = ["CHAPTER_RE", "CHAPTERS", "COURSE_ID", "REPO", "STUDENT", "STUDENT_ID",
           "NbgraderFailed", "apply_mocks", "build_course", "chapter_notebooks", "exercise_name",
           "exercises", "grade_ids", "is_graded", "marker_problems", "mocks", "nbgrader_meta",
           "parameters_cell", "release", "student_version"]

