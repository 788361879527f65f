"""Classroom assignments cut from the real source (docs/teaching.md).

    exercises.py   the exercises (number, title, points), and the solution fences in the source
    checks.py      each exercise's cases, how to run them on a package, and how to judge the result
    make.py        ``minilora assignment make``: the student copy, with the chosen solutions taken out
    cli.py         the ``minilora assignment`` subcommands: make, check, list (and grade)
"""
