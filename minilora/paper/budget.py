"""Claim 3 (Table 5): under a fixed budget of trainable parameters, adapt Wq and Wv rather than one matrix alone."""
from .lab import Run, mean_spread, show
from .plots import bars, new_figure, save

NAME = "budget"
TITLE = "Which weights under a fixed budget"
SOURCE = "Table 5"
PAPER = "GPT-3, 18M parameters: Wq 70.4, Wk 70.0, Wv 73.0, Wo 73.2, Wq+Wk 71.4, Wq+Wv 73.7, all four 73.7 (WikiSQL)"
# The paper's budget: r = 8 on one kind of matrix, r = 4 on two, r = 2 on four: 2 L̂ d r is the same for each.
RUNS = (Run(("q",), 8), Run(("k",), 8), Run(("v",), 8), Run(("o",), 8),
        Run(("q", "k"), 4), Run(("q", "v"), 4), Run(("q", "k", "v", "o"), 2))
TOLERANCE = 2.0  # BLEU points


def jobs(lab):
    return [(run, seed) for seed in lab.seeds for run in RUNS]


def _label(run):
    return "+".join("W" + t for t in run.targets)


def measure(lab):
    """{label: {"targets", "r", "bleu": [per seed], "exact_match": [...], "trainable"}} for each way to spend the budget."""
    result = {}
    for run in RUNS:
        runs = [lab.train(run, seed) for seed in lab.seeds]
        result[_label(run)] = {
            "r": run.r, "bleu": [x["bleu"] for x in runs], "exact_match": [x["exact_match"] for x in runs],
            "trainable": runs[0]["trainable"]}
    return result


def verdict(result):
    means = {label: mean_spread(v["bleu"]) for label, v in result.items()}
    best = max(means, key=lambda label: means[label][0])
    qv, tol = means["Wq+Wv"], lambda a, b: max(TOLERANCE, means[a][1] + means[b][1])
    qv_near_best = means[best][0] - qv[0] <= tol(best, "Wq+Wv")
    single_worse = all(qv[0] - means[one][0] > tol(one, "Wq+Wv") for one in ("Wq", "Wk"))
    measured = "; ".join(f"{_label(run)} {show(result[_label(run)]['bleu'])}" for run in RUNS) + f" (best: {best})"
    why = []
    if not qv_near_best:
        why.append(f"{best} beats Wq+Wv by {means[best][0] - qv[0]:.1f} BLEU")
    if not single_worse:
        why.append("Wq or Wk alone is not clearly (by more than 2 BLEU and the spread) below Wq+Wv at this scale")
    holds = "yes" if qv_near_best and single_worse else ("partly" if qv_near_best or single_worse else "no")
    return {"measured": measured, "holds": holds, "why": "; ".join(why)}


def plot(result, path):
    fig, (ax,) = new_figure(1, 1, width=9)
    labels = [_label(run) for run in RUNS]
    bars(ax, [f"{label}\nr={result[label]['r']}" for label in labels],
         [[result[label]["bleu"], result[label]["exact_match"]] for label in labels],
         series=["BLEU", "exact match %"], colors=["tab:blue", "tab:orange"])
    ax.set_ylim(0, 100)
    ax.set_ylabel("test score")
    trainable = {result[label]["trainable"] for label in labels}
    ax.set_title(f"Claim 3: the same {'/'.join(f'{t:,}' for t in sorted(trainable))} trainable values spent on "
                 "different matrices (mean ± std over seeds, dots: seeds)", fontsize=9)
    save(fig, path)
