"""The build cache (tools/build.py): a chapter runs again only when what it runs changes. Its key
is computed from the staged notebook (the chapter with its schedule and student check), the
schedule and the pinned requirements."""

import nbformat

from notebook_checks import chapter_paths
from tools import build

CHAPTER = chapter_paths()[0]


def staged_key(run_dir, path=CHAPTER, schedule="ci"):
    build.stage_runs([path], schedule, run_dir)
    return build.cache_key(run_dir / path.stem / path.name, schedule)


def test_staging_the_same_chapter_twice_gives_the_same_key(tmp_path):
    assert staged_key(tmp_path / "first") == staged_key(tmp_path / "second")


def test_the_key_changes_with_the_chapter_the_schedule_and_the_requirements(
        tmp_path, monkeypatch):
    key = staged_key(tmp_path / "run")
    edited = nbformat.read(CHAPTER, as_version=4)
    edited.cells[-1].source += "\n"
    (tmp_path / "edited").mkdir()
    nbformat.write(edited, tmp_path / "edited" / CHAPTER.name)
    assert staged_key(tmp_path / "run-edited", tmp_path / "edited" / CHAPTER.name) != key
    assert staged_key(tmp_path / "run-full", schedule="full") != key
    pins = tmp_path / "requirements.txt"
    pins.write_text((build.ROOT / "requirements.txt").read_text() + "\nsomething==1.0\n")
    monkeypatch.setattr(build, "ENVIRONMENT_FILES", [pins, "requirements-nodeps.txt"])
    assert staged_key(tmp_path / "run-pins") != key


def test_a_cached_run_is_restored_unchanged(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "CACHE_DIR", tmp_path / "cache")
    run_dir = tmp_path / "run"
    key = staged_key(run_dir)
    assert not build.restore_from_cache(CHAPTER.stem, key, run_dir), "nothing cached yet"
    executed = run_dir / CHAPTER.stem / CHAPTER.name
    executed.write_text(executed.read_text().replace('"execution_count": null',
                                                      '"execution_count": 1', 1))
    (run_dir / CHAPTER.stem / "results").mkdir()
    (run_dir / CHAPTER.stem / "results" / "numbers.json").write_text("{}")
    build.store_in_cache(CHAPTER.stem, key, run_dir)
    ran = executed.read_bytes()
    assert staged_key(run_dir) == key, "staging again starts from the clean chapter"
    assert executed.read_bytes() != ran
    assert build.restore_from_cache(CHAPTER.stem, key, run_dir)
    assert executed.read_bytes() == ran
    assert (run_dir / CHAPTER.stem / "results" / "numbers.json").exists()
