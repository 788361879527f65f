"""``minilora paper``: the LoRA paper's claims, measured at small scale, with seeds, plots and a report.

    minilora paper --quick --seeds 1      # every claim in a few minutes: checks the machinery, not LoRA
    minilora paper                        # the full run: 3 seeds; 5.6 min on one H200, about 47 min on 2 CPU cores
    minilora paper --claims rank budget   # some claims only
    minilora paper --search               # how FULL's settings were chosen, on the validation split (search.py)

One module per claim (numbered as in docs/paper.md):
    1 quality.py        LoRA r=8 on Wq, Wv against full fine-tuning (Tables 2–4)
    2 rank.py           r = 1 ... 64 on Wq, Wv and on Wq alone (Table 6)
    3 budget.py         one parameter budget spent on different matrices (Table 5)
    4 subspace.py       φ between adapters of rank 8 and 64, and of two seeds (Figures 3–4)
    5 amplification.py  what ΔW amplifies in W (Table 7)
    6 latency.py        base, unmerged and merged forward passes (Table 1)
    7 checkpoint.py     adapter against checkpoint bytes, as d grows (Section 4.2)
    8 cost.py           step time and peak memory, LoRA against full (Section 4.2)
Each has NAME, TITLE, SOURCE, PAPER (the paper's figure), jobs(lab) (the training runs it
needs), measure(lab) -> result, verdict(result) -> {"measured", "holds", "why"} and
plot(result, path). lab.py holds the sizes, the pretrained model and the cached runs;
report.py writes report.md and results.json.
"""
import os
import sys
import time

from ..cli_options import add_backend_argument, int_at_least, require_extras
from ..io import load_json
from . import amplification, budget, checkpoint, cost, latency, quality, rank, subspace

CLAIMS = (quality, rank, budget, subspace, amplification, latency, checkpoint, cost)  # the report's order, 1..8
RUN_ORDER = (checkpoint, latency, cost, subspace, amplification, quality, rank, budget)  # the cheap ones first
DESCRIPTION = (
    "Measure the LoRA paper's eight claims on a small GPT pretrained here and the E2E-style data-to-text task: "
    "quality against full fine-tuning, the rank sweep, the fixed-budget table, subspace similarity, amplification, "
    "inference latency, checkpoint bytes and training cost. Writes OUT/report.md (one table: the paper's figure, "
    "ours as mean ± std over seeds, and whether the claim holds at this scale), OUT/results.json and one PNG per "
    "claim. Finished runs are cached in OUT and reused (--force redoes them). --quick: every claim in a few "
    "minutes at a size where the numbers mean little. See docs/paper.md."
)


def add_paper_arguments(parser):
    """Add the options of ``minilora paper`` to an argparse parser."""
    add_backend_argument(parser)
    parser.add_argument("--claims", nargs="+", choices=[c.NAME for c in CLAIMS], default=[c.NAME for c in CLAIMS],
                        metavar="CLAIM", help=f"which claims to measure, of: {', '.join(c.NAME for c in CLAIMS)}")
    parser.add_argument("--seeds", type=int_at_least(1), default=3, help="seeds per quality figure (LoRA's init and the batch order)")
    parser.add_argument("--quick", action="store_true", help="a tiny model and a few steps: checks that everything runs")
    parser.add_argument("--out", default=None, help="output and cache folder (default: runs/paper, runs/paper-quick or runs/paper-search)")
    parser.add_argument("--force", action="store_true", help="redo every run and measurement instead of reusing the cache")
    parser.add_argument("--search", action="store_true",
                        help="instead of the claims: choose the full run's pretraining, batch, learning rates and steps on "
                             "the validation split, and write OUT/search.json (minilora/paper/search.py; on a GPU, in parallel processes)")
    return parser


def run_paper(args):
    """Measure the chosen claims; writes report.md, results.json and the PNGs into args.out. Returns the results."""
    from .. import backend

    require_extras("paper", ("matplotlib", "tqdm"), extra="paper")  # before anything is trained
    if args.seeds < 1:
        raise ValueError(f"paper: --seeds must be at least 1, got {args.seeds}")
    args.backend = getattr(args, "backend", None) or backend.get_backend()
    search = getattr(args, "search", False)
    args.out = args.out or os.path.join("runs", "paper-search" if search else "paper-quick" if args.quick else "paper")
    with backend.using_backend(args.backend):
        if search:
            from .search import run_search

            return run_search(args)
        return _run(args)


def _run(args):
    from tqdm.auto import tqdm

    from .lab import FULL, QUICK, Lab
    from .report import write_report

    started = time.perf_counter()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    lab = Lab(QUICK if args.quick else FULL, range(args.seeds), args.out, args.force, args.backend)
    chosen = [claim for claim in RUN_ORDER if claim.NAME in args.claims]
    outcomes = {}
    for claim in chosen:
        number = CLAIMS.index(claim) + 1
        jobs = list(dict.fromkeys(claim.jobs(lab)))
        bar = tqdm(total=len(jobs) + 1, desc=f"claim {number}: {claim.NAME}", unit="run", dynamic_ncols=True, file=sys.stderr)
        claim_started = time.perf_counter()
        for run, seed in jobs:
            bar.set_postfix_str(f"{run.label}, seed {seed}")
            lab.train(run, seed)
            bar.update()
        bar.set_postfix_str("measuring")
        path = os.path.join(args.out, "claims", f"{claim.NAME}.json")
        settings = lab.settings(claim=claim.NAME, seeds=lab.seeds, base=os.path.basename(lab.base()))
        result = lab.cached(path, settings, lambda: claim.measure(lab))
        plot = f"{number}_{claim.NAME}.png"
        claim.plot(result, os.path.join(args.out, plot))
        outcomes[claim.NAME] = {"number": number, "title": claim.TITLE, "source": claim.SOURCE, "paper": claim.PAPER,
                                **claim.verdict(result), "plot": plot, "seconds": time.perf_counter() - claim_started,
                                "result": result}
        bar.update()
        bar.close()
    outcomes = dict(sorted(outcomes.items(), key=lambda item: item[1]["number"]))
    return write_report(args, lab, outcomes, seconds=time.perf_counter() - started, load=load)


def replot(folder):
    """Draw every plot of a finished run again from its results.json (after a change to a plot, not to a number)."""
    results = load_json(os.path.join(folder, "results.json"))
    for claim in CLAIMS:
        if claim.NAME in results["claims"]:
            outcome = results["claims"][claim.NAME]
            claim.plot(outcome["result"], os.path.join(folder, outcome["plot"]))
