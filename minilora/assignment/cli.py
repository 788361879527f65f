"""``minilora assignment``: list the exercises, make a student copy, check an exercise (and grade, for instructors).

    minilora assignment list                      # the exercises with their points
    minilora assignment make OUT --exercises 1-9  # a student copy in OUT
    minilora assignment check 7                   # exercise 7's checks on the installed minilora

minilora/cli.py makes the ``assignment`` parser; ``add_assignment_actions`` adds
its actions. ``grade`` is added by ``grade.py`` (``register(actions, add_subparser)``),
which only the instructor's package has: a student copy has no grader.
"""
import importlib
import importlib.util

from ..cli_options import CommandError
from .exercises import EXERCISES, exercise, handed_out, parse_numbers, solution_files

DESCRIPTION = ("Classroom assignments cut from minilora's own source (docs/teaching.md): 'make' writes a student copy "
               "with the chosen exercises blanked out, 'check N' runs exercise N's checks on the installed minilora "
               "and says what fails, 'list' shows the exercises and their points. The assignments run on NumPy, "
               "whatever --backend or $MINILORA_BACKEND says: they never import CuPy.")


class ChecksFailed(CommandError):
    """Some check did not pass: exit status 1, the report already printed."""

    status = 1


def add_assignment_actions(parser, add_subparser):
    """Add the actions (list, make, check, and grade where grade.py exists) to the ``assignment`` parser.

    ``add_subparser(actions, name, **kwargs)`` is minilora.cli's: a parser with its help format and --debug.
    """
    parser.set_defaults(backend="numpy")  # a NumPy activity: this replaces --backend and $MINILORA_BACKEND
    actions = parser.add_subparsers(title="actions", dest="action", metavar="ACTION", required=True)
    add_subparser(actions, "list", help="the exercises, their points, and the files that hold them").set_defaults(run=run_list)
    make = add_subparser(actions, "make", help="write a student copy with the chosen exercises blanked out")
    make.add_argument("out", metavar="OUT", help="the folder to write (new or empty)")
    make.add_argument("--exercises", default=None, help="which exercises to blank, e.g. 1,3-7 (default: all)")
    make.add_argument("--force", action="store_true", help="replace OUT even if it is not empty")
    make.set_defaults(run=run_make)
    check = add_subparser(actions, "check", help="run exercise N's checks on the installed minilora and say what fails")
    check.add_argument("numbers", metavar="N", help="an exercise number, or several: 1,3-7")
    check.set_defaults(run=run_check)
    if importlib.util.find_spec(f"{__package__}.grade") is not None:
        importlib.import_module(f"{__package__}.grade").register(actions, add_subparser)


def run_list(args):
    files = solution_files()
    numbers = handed_out()
    print(f"{'#':>3}  {'exercise':<40} {'points':>6}  where")
    for e in EXERCISES:
        if e.number in numbers:
            worked = " (worked)" if e.worked else ""
            print(f"{e.number:>3}  {e.title + worked:<40} {e.points:>6}  {', '.join(files.get(e.number, []))}")
    print(f"{'':>3}  {'total':<40} {sum(e.points for e in EXERCISES if e.number in numbers):>6}")


def run_make(args):
    from .make import OutputExists, make

    numbers = _numbers(args.exercises) if args.exercises else None
    try:
        out = make(args.out, numbers, force=args.force)
    except OutputExists as error:
        raise CommandError(str(error)) from error
    chosen = numbers or tuple(e.number for e in EXERCISES)
    blanked = [n for n in chosen if not exercise(n).worked]
    print(f"wrote the student copy to {out}: exercises {_ranges(blanked)} blanked out. "
          f"Students: pip install -e {out}, then minilora assignment check N (see {out}/README.md).")


def run_check(args):
    from .student import check_exercise

    package = importlib.import_module(__name__.split(".")[0])  # the minilora this command belongs to
    package.set_backend("numpy")
    failing = []
    for number in _numbers(args.numbers):
        passed, report = check_exercise(package, number)
        print(report)
        if not passed:
            failing.append(number)
    if failing:
        raise ChecksFailed(f"exercise{'s' if len(failing) > 1 else ''} {_ranges(failing)} "
                           f"{'do' if len(failing) > 1 else 'does'} not pass yet (see above)")


def _numbers(text):
    try:
        return parse_numbers(text)
    except ValueError as error:
        raise CommandError(str(error)) from error


def _ranges(numbers):
    """(1, 2, 3, 5) -> '1-3, 5'."""
    spans = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in spans)
