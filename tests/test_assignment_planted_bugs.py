"""Planted bugs prove the grader: each is caught by its own exercise, and by no other.

A full-solution student copy scores 100 %, the blank copy only the worked examples.
Every bug of tests/planted_bugs.py is planted into the full solution; the grader runs
the bugged exercise (its child process only) and must fail it. Because the grader
splices the instructor's code into every other exercise's region, the other
exercises' hybrid packages must be identical to the full solution's: asserted for
every bug, and a few bugs are graded on all exercises.
"""
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from minilora.assignment import grade as grading
from minilora.assignment.exercises import EXERCISES

from planted_bugs import BUGS, planted_copy, student_copies

ALL_GRADED = ("03-shared-gradient-overwritten", "12-embedding-duplicates-dropped", "20-dB-unscaled")


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    return student_copies(tmp_path_factory.mktemp("copies"))


@pytest.fixture(scope="module")
def planted(copies, tmp_path_factory):
    """{bug id: (copy, [ExerciseResult] or the exception that planting raised)}, graded in parallel."""
    folder, full = tmp_path_factory.mktemp("planted"), copies[1]

    def run(bug):
        try:
            copy = planted_copy(full, bug, folder)
        except AssertionError as error:
            return bug.id, (None, error)
        numbers = None if bug.id in ALL_GRADED else [bug.number]
        return bug.id, (copy, grading.grade(copy, numbers, jobs=1))

    with ThreadPoolExecutor(max_workers=len(os.sched_getaffinity(0))) as pool:
        return dict(pool.map(run, BUGS))


def test_every_exercise_has_three_bugs():
    counts = {e.number: sum(b.number == e.number for b in BUGS) for e in EXERCISES}
    assert all(count >= 3 for count in counts.values()), counts
    assert len({b.id for b in BUGS}) == len(BUGS)


def test_full_solution_scores_everything(copies):
    results = grading.grade(copies[1])
    assert [r.number for r in results] == [e.number for e in EXERCISES]
    failed = {r.number: r.first_failure for r in results if not r.passed}
    assert not failed
    assert sum(r.score for r in results) == sum(e.points for e in EXERCISES)


def test_blank_copy_scores_only_the_worked_examples(copies):
    results = grading.grade(copies[0])
    assert {r.number for r in results if r.passed} == {e.number for e in EXERCISES if e.worked}
    assert sum(r.score for r in results) == sum(e.points for e in EXERCISES if e.worked)
    for r in results:
        if not r.passed:
            assert "not implemented yet" in r.first_failure


@pytest.fixture(scope="module")
def full_hybrids(copies):
    """{exercise: the fenced files of its hybrid} for the full solution."""
    return {e.number: grading.splice(copies[1] / "minilora", {e.number}) for e in EXERCISES}


@pytest.mark.parametrize("bug", BUGS, ids=lambda bug: bug.id)
def test_planted_bug_fails_its_exercise_only(bug, planted, full_hybrids):
    copy, results = planted[bug.id]
    if isinstance(results, Exception):
        raise results
    mine = next(r for r in results if r.number == bug.number)
    assert mine.score == 0 and mine.first_failure, f"bug {bug.id} was not caught: {mine.report()}"
    others = [r for r in results if r.number != bug.number]
    assert all(r.passed for r in others), {r.number: r.first_failure for r in others if not r.passed}
    for e in EXERCISES:
        if e.number != bug.number:
            assert grading.splice(copy / "minilora", {e.number}) == full_hybrids[e.number], e.number


def test_a_patch_that_no_longer_applies_fails_loudly(copies, tmp_path):
    from planted_bugs import Bug

    with pytest.raises(AssertionError, match="occurs 0 times"):
        planted_copy(copies[1], Bug(6, "stale", "no such code", "x"), tmp_path)
