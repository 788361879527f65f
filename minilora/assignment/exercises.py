"""The exercises: what each one asks, and where its solution sits in the source.

Each exercise's solution lives in the real source between two fence lines,
with the words nbgrader and otter-grader use and the exercise's number and title:
a line ``# BEGIN SOLUTION 7 "Exp, Log, Tanh and Sigmoid backward"`` above it and
a line ``# END SOLUTION 7`` below it, indented as the code. The solution runs as
it is. ``minilora assignment make`` writes a student copy in which each chosen
region's fences read ``# BEGIN EXERCISE 7 "..."`` and ``# END EXERCISE 7`` and
its body is one ``raise NotImplementedError("Exercise 7 (...): ... Hint: ...")``.

An exercise may have several regions (Mul's backward and Div's); they share its
number. Worked examples (``worked=True``) are fenced and graded like the others,
but ``make`` keeps their solution, as minitorch keeps Add and Log.
"""
import dataclasses
import importlib
import importlib.util
import re
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Exercise:
    """One exercise. ``summary``: what the student implements, one sentence; ``hint``: where to start."""

    number: int
    title: str
    points: int
    worked: bool
    summary: str
    hint: str


def _exercise(number, title, points, summary, hint, worked=False):
    return Exercise(number, title, points, worked, summary, hint)


EXERCISES = (
    # ---- the engine: minilora/autograd.py, minilora/gradcheck.py
    _exercise(1, "Topological order", 3,
              "_topological_order(root) in autograd.py: every tensor that requires grad and is reachable from root, "
              "each listed after all of its inputs (._parents).",
              "a depth-first search that appends a node once all its parents are done; mark nodes visited so a "
              "shared subexpression appears once, and use an explicit stack (a deep graph must not hit Python's "
              "recursion limit)."),
    _exercise(2, "unbroadcast", 2,
              "unbroadcast(grad, shape) in autograd.py: sum grad down to shape, the backward of NumPy broadcasting.",
              "broadcasting adds leading axes and stretches axes of size 1; sum over the first and over the second "
              "(keepdims=True)."),
    _exercise(3, "The backward loop", 4,
              "the loop of Tensor.backward: walk the nodes in reverse topological order, call each node's "
              "Function.backward, and accumulate every input's gradient, into .grad at the leaves.",
              "keep a dict id(tensor) -> gradient; a tensor used twice receives two gradients that add up; a leaf "
              "that already has a .grad adds to it (+=); sum each gradient back to its input's shape with unbroadcast; "
              "free the graph unless retain_graph."),
    _exercise(4, "Numerical gradient", 3,
              "numerical_gradient in gradcheck.py: d sum(cotangent * fn(*inputs)) / d inputs[which] by central differences.",
              "nudge one value at a time by +eps and -eps, take (L(+) - L(-)) / (2 eps), and put the value back "
              "before the next one; the inputs must be unchanged afterwards."),
    # ---- elementwise ops: minilora/functional/elementwise.py
    _exercise(5, "Add, Sub and Neg backward", 1,
              "the backward of Add, Sub and Neg (a worked example).",
              "read them: the gradient of a sum passes through unchanged.", worked=True),
    _exercise(6, "Mul and Div backward", 2,
              "the backward of Mul and Div: the gradient of each input, for broadcasting inputs.",
              "the product rule; write the gradients for the broadcast shape: the engine sums them back "
              "(unbroadcast). Return None for an input whose ctx.needs_input_grad is False."),
    _exercise(7, "Exp, Log, Tanh and Sigmoid backward", 3,
              "the backward of Exp, Log, Tanh and Sigmoid.",
              "write each derivative in terms of what the forward kept in ctx (often the output y)."),
    # ---- matrix products: minilora/functional/linalg.py
    _exercise(8, "MatMul backward", 4,
              "MatMul.backward: da and db for a @ b with batched, broadcasting and 1-D inputs.",
              "y = a @ b => da = dy @ b^T, db = a^T @ dy; treat a 1-D a as a row and a 1-D b as a column, "
              "then drop the axis you added."),
    _exercise(9, "Linear backward", 3,
              "Linear.backward: dx, dW and db for y = x W^T + b, x of any number of leading axes.",
              "flatten x and dy to 2-D (N, in) and (N, out) first; W is (out, in)."),
    # ---- reductions: minilora/functional/reduce.py
    _exercise(10, "Sum and Mean backward", 1,
              "the backward of Sum and Mean (a worked example).",
              "read them: _expand puts back the reduced axes so that the gradient broadcasts.", worked=True),
    _exercise(11, "Max and Var backward", 3,
              "the backward of Max (tied maxima share the gradient equally) and of Var (with ddof).",
              "ctx.is_max marks every maximum; count the ties along the reduced axes; var's gradient is "
              "2 (x - mean) / (n - ddof) times dy."),
    # ---- indexing: minilora/functional/shape.py, minilora/functional/embedding.py
    _exercise(12, "GetItem and Embedding backward", 3,
              "the backward of GetItem and Embedding, where an index or a token id may repeat.",
              "start from zeros of the input's shape and scatter-add dy into it (backend.scatter_add): "
              "w[idx] += g keeps only one of two repeated indices."),
    # ---- softmax and the loss: minilora/functional/softmax.py
    _exercise(13, "Softmax and log-softmax backward", 3,
              "softmax_backward(y, dy, axis) and LogSoftmax.backward.",
              "the Jacobian of softmax is diag(y) - y y^T; multiply it by dy without forming it."),
    _exercise(14, "Cross-entropy backward", 4,
              "CrossEntropy.backward: the gradient of the logits, for mean, sum and none, rows with ignore_index getting 0.",
              "d(-log softmax(z)[t]) / dz = softmax(z) - onehot(t); ctx.keep marks the rows that count and "
              "ctx.count how many there are."),
    # ---- normalisation: minilora/functional/norm.py
    _exercise(15, "LayerNorm backward", 4,
              "LayerNorm.backward: dx, dweight and dbias, with or without weight and bias.",
              "walk the forward's steps in reverse: first y = xhat w + b, then xhat = (x - mean) rstd, where "
              "mean and rstd depend on x too (docs/derivations.md derives it)."),
    # ---- attention: minilora/functional/attention.py
    _exercise(16, "Attention with the causal mask", 5,
              "causal_mask(xp, T, S) and ScaledDotProductAttention.backward: dq, dk and dv.",
              "query t sits at position S - T + t and sees keys up to it (numpy tril with an offset); the backward "
              "walks the forward's four steps in reverse and reuses softmax_backward."),
    # ---- training: minilora/optim.py
    _exercise(17, "SGD with momentum", 3,
              "SGD.step: weight decay, the momentum buffer (b = g at the first step), Nesterov, the update, in place.",
              "follow the four lines of SGD's docstring; keep the buffer in self.state[i]['momentum_buffer'] and "
              "update p.data in place."),
    _exercise(18, "AdamW", 4,
              "adamw_update: decoupled weight decay, the two moments, bias correction, the step, all in place.",
              "the moments m and v are updated in place (m[...] = ...); the bias corrections divide by 1 - beta^t, "
              "t counting from 1."),
    _exercise(19, "Gradient clipping", 2,
              "clip_grad_norm: scale all gradients together so that their joint L2 norm is at most max_norm; "
              "return the norm before clipping.",
              "the joint norm is the norm of the per-parameter norms; scale by min(1, max_norm / (total + 1e-6)), in place."),
    # ---- LoRA: minilora/lora/
    _exercise(20, "lora_linear forward and backward", 5,
              "LoRALinearFunction: h = x W0^T + b + s (x A^T) B^T and its backward dx, dA, dB (and dW0, db only "
              "when asked), never forming the d x k product B A.",
              "keep z = x_lora A^T (N, r) for dB; dz = s dh B; a frozen W0 (ctx.needs_input_grad[1] False) "
              "must cost no (d, k) product."),
    _exercise(21, "Merge and unmerge", 2,
              "LoRALinear.merge and unmerge: fold s B A into the base weight and take it out again.",
              "delta_weight(name) gives s B A; assign a new array to the weight's .data."),
    _exercise(22, "Trainable parameters", 2,
              "mark_only_lora_as_trainable and count_parameters: freeze all but A and B (and the chosen biases), "
              "then count the trainable values: 2 L d r for LoRA on L square d x d matrices.",
              "p.requires_grad_(flag) sets the flag; lora_layers(model) yields the adapted layers."),
    _exercise(23, "Subspace similarity", 3,
              "subspace_similarity(A1, A2): the paper's phi(i, j) = ||U1_i^T U2_j||_F^2 / min(i, j) for every i, j.",
              "U1, U2 hold the right-singular vectors as columns; cumulative sums over both axes give every "
              "||U1_i^T U2_j||_F^2 at once."),
)

_BY_NUMBER = {e.number: e for e in EXERCISES}


def exercise(number):
    """The Exercise numbered ``number``; a ValueError naming the valid numbers otherwise."""
    try:
        return _BY_NUMBER[int(number)]
    except (KeyError, ValueError, TypeError):
        raise ValueError(f"there is no exercise {number!r}; the exercises are numbered "
                         f"{EXERCISES[0].number} to {EXERCISES[-1].number}. Fix: see 'minilora assignment list'.") from None


def handed_out():
    """The numbers of this copy's exercises: ``handout.HANDED_OUT``, which make writes into a student copy,
    or every exercise in the full package."""
    if importlib.util.find_spec(f"{__package__}.handout") is None:
        return tuple(e.number for e in EXERCISES)
    return importlib.import_module(f"{__package__}.handout").HANDED_OUT


def parse_numbers(text):
    """'1,3-7' -> (1, 3, 4, 5, 6, 7), each checked to be an exercise; a ValueError otherwise."""
    numbers = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        try:
            span = range(int(first), int(last or first) + 1)
        except ValueError:
            raise ValueError(f"cannot read {part.strip()!r} in {text!r}: write numbers and ranges, e.g. 1,3-7") from None
        numbers.extend(exercise(n).number for n in span)
    return tuple(sorted(set(numbers)))


@dataclasses.dataclass(frozen=True)
class Region:
    """One fenced region of a source file.

    number: the exercise's number. kind: "solution" (``# BEGIN SOLUTION``, the
    instructor's source) or "exercise" (``# BEGIN EXERCISE``, a student copy).
    start_line, end_line: the 1-based line numbers of the BEGIN and END lines.
    body: the text between them (whole lines, each ending in a newline).
    title: the title written on the BEGIN line. indent: the BEGIN line's indentation.
    """

    number: int
    kind: str
    start_line: int
    end_line: int
    body: str
    title: str = ""
    indent: str = ""


BEGIN = re.compile(r'^(\s*)# BEGIN (SOLUTION|EXERCISE) (\d+) "([^"]+)"\s*$')
END = re.compile(r"^(\s*)# END (SOLUTION|EXERCISE) (\d+)\s*$")
_MARKER = re.compile(r"#\s*(BEGIN|END)\s+(SOLUTION|EXERCISE)\b")


def find_regions(text, path):
    """Every fenced region of ``text`` (the contents of ``path``), in order.

    Raises ValueError naming ``path`` and the line for a fence that is malformed,
    unbalanced, nested, of an unknown exercise, or whose END does not match its BEGIN.
    """
    regions, open_ = [], None
    lines = text.splitlines(keepends=True)
    for n, line in enumerate(lines, 1):
        begin, end = BEGIN.match(line), END.match(line)
        where = f"{path}:{n}"
        if begin:
            if open_:
                raise ValueError(f"{where}: a BEGIN fence inside the region opened at line {open_[0]}. "
                                 "Fix: close each region with its END line before the next BEGIN.")
            number = int(begin.group(3))
            if begin.group(4) != exercise(number).title:
                raise ValueError(f"{where}: fence title {begin.group(4)!r} is not exercise {number}'s "
                                 f"({exercise(number).title!r}). Fix: copy the title from exercises.py.")
            open_ = (n, begin)
        elif end:
            if not open_:
                raise ValueError(f"{where}: an END fence with no BEGIN before it.")
            first, begin = open_
            if (end.group(2), end.group(3)) != (begin.group(2), begin.group(3)):
                raise ValueError(f"{where}: '# END {end.group(2)} {end.group(3)}' closes "
                                 f"'# BEGIN {begin.group(2)} {begin.group(3)}' of line {first}. Fix: the same word and number.")
            regions.append(Region(int(begin.group(3)), begin.group(2).lower(), first, n, "".join(lines[first:n - 1]),
                                  begin.group(4), begin.group(1)))
            open_ = None
        elif _MARKER.search(line) and line.lstrip().startswith("#"):
            raise ValueError(f"{where}: a malformed fence {line.strip()!r}. Fix: write "
                             '# BEGIN SOLUTION 7 "Title" and # END SOLUTION 7.')
    if open_:
        raise ValueError(f"{path}:{open_[0]}: BEGIN fence never closed. Fix: add its END line.")
    return regions


def package_root():
    """The folder of the installed ``minilora`` package (the one this module belongs to)."""
    return Path(__file__).resolve().parent.parent


def source_files(root=None):
    """Every .py file of the package under ``root`` (default: the installed one), sorted, as paths relative to root's parent."""
    root = Path(root) if root else package_root()
    return sorted(p.relative_to(root.parent).as_posix() for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def fenced_files(root=None):
    """The source files that may hold fences: all but ``minilora/assignment/`` (whose own text talks about fences)."""
    return [path for path in source_files(root) if not path.startswith("minilora/assignment/")]


def solution_files(root=None):
    """{exercise number: [relative paths of the files holding its regions, e.g. 'minilora/autograd.py']}.

    Scans every .py file of the package but minilora/assignment/ (the installed one unless ``root`` names
    another package folder) for fences of either kind.
    """
    root = Path(root) if root else package_root()
    found = {}
    for relative in fenced_files(root):
        text = (root.parent / relative).read_text(encoding="utf-8")
        for region in find_regions(text, relative):
            paths = found.setdefault(region.number, [])
            if relative not in paths:
                paths.append(relative)
    return dict(sorted(found.items()))
