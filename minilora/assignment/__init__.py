"""Classroom assignments cut from the real source (docs/teaching.md).

    exercises.py   the exercises (number, title, points), and the solution fences in the source
    checks.py      each exercise's cases, how to run them on a package, and how to judge the result
    make.py        ``minilora assignment make``: the student copy, with the chosen solutions taken out
    student.py     ``minilora assignment check N``: an exercise's checks, explained to the student
    grade.py       ``minilora assignment grade``: each exercise in a sandboxed child, judged here (instructor only)
    worker.py      the child's side of grading: run the cases, send back arrays (instructor only)
    cli.py         the ``minilora assignment`` subcommands: make, check, list (and grade)
"""
