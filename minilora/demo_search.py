"""``minilora demo --search``: choose each method's learning rate and steps on the validation split.

    minilora --backend cupy demo --search     # 15 runs of 1,200 steps: about 100 s on one H200 as 15 parallel
                                              # processes, some 10-15 minutes one after another (estimated); hours on 2 CPU cores

The same search for every method in ``demo.METHODS``: for each learning rate in
LEARNING_RATES, one run of MAX_STEPS steps (warmup, then that constant rate), scored by
validation BLEU every EVAL_EVERY steps. The learning rate does not depend on the run's
length, so the model at step s of a run is the model of a run of s steps: one run per
learning rate scores the whole grid of steps x learning rates, and a chosen (lr, steps)
reproduces exactly. The pick is ``choose``: the fewest steps whose validation BLEU is within
TOLERANCE of the method's best. The test split is never read.

Every score goes to ``<out>/search.json``; the chosen recipe is printed in the form of
``demo.METHODS``, to be pasted there with a comment naming the command, machine and date.
"""
import os
import sys

from . import backend, data
from .demo import METHODS, MODEL, check_arguments, finetune, method_model, pretrained_model, task_splits
from .io import save_json

LEARNING_RATES = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
MAX_STEPS = 1200
EVAL_EVERY = 100
# BLEU points. At a constant learning rate one run's validation BLEU moves by 1 to 5 points from one evaluation to
# the next (docs/demo.md), so a best that is 2 points higher but hundreds of steps later is mostly noise; and fewer
# steps keep the CPU demo short. (The first search used 0.5; docs/demo.md reports that recipe's figures too.)
TOLERANCE = 2.0


def run_search(args):
    """``minilora demo --search``: check ``args`` as run_demo does, then search; returns the search.json dict."""
    check_arguments(args)
    with backend.using_backend(args.backend):
        backend.retain_host_memory()  # as run_demo: the same process state as the demo the recipe is for
        return search(args)


def search(args, learning_rates=LEARNING_RATES, max_steps=MAX_STEPS, every=EVAL_EVERY):
    """Run the search for the demo's methods with ``args`` (as for run_demo); returns the search.json dict."""
    from tqdm.auto import tqdm

    from .train import generation_metrics

    if max_steps < every or every < 1:
        raise ValueError(f"search: need 1 <= every <= max_steps, got every={every}, max_steps={max_steps}")
    tokenizer = data.CharTokenizer.printable()
    splits = task_splits()
    train = data.encode_examples(splits.train, tokenizer, MODEL.block_size)
    base_dir, pretraining = pretrained_model(args, tokenizer, lambda line: print(line, file=sys.stderr))
    records = []
    bar = tqdm(total=len(METHODS) * len(learning_rates) * max_steps, desc="search", unit="step", dynamic_ncols=True)
    for method in METHODS:
        for lr in learning_rates:
            bar.set_postfix_str(f"{method.name}, lr {lr:g}")

            def on_stop(model, step, method=method, lr=lr):
                model.eval()
                bleu = generation_metrics(model, tokenizer, splits.validation)["bleu"]
                records.append({"method": method.name, "lr": lr, "step": step, "val_bleu": bleu})
                bar.update(every)

            model = method_model(method, base_dir, args.seed)
            finetune(method, model, train, args.seed, lr, range(every, max_steps + 1, every), on_stop, progress=False)
    bar.close()

    chosen = choose(records)
    results = {
        "command": f"minilora --backend {args.backend} demo --search --seed {args.seed} --pretrain-steps {args.pretrain_steps}"
                   + (" --no-task-text" if getattr(args, "no_task_text", False) else ""),
        "backend": args.backend, "seed": args.seed, "pretraining": pretraining,
        "grid": {"learning_rates": list(learning_rates), "max_steps": max_steps, "eval_every": every, "tolerance": TOLERANCE},
        "validation_examples": len(splits.validation), "records": records, "chosen": chosen,
    }
    save_json(os.path.join(args.out, "search.json"), results)
    print(format_choice(METHODS, chosen))
    return results


def choose(records, tolerance=TOLERANCE):
    """{method: {"lr", "steps", "val_bleu", "best_val_bleu"}}: per method, the fewest steps whose validation BLEU
    is within ``tolerance`` of its best over all (lr, step); among those, the highest BLEU, then the smaller lr."""
    chosen = {}
    for method in dict.fromkeys(r["method"] for r in records):
        mine = [r for r in records if r["method"] == method]
        best = max(r["val_bleu"] for r in mine)
        pick = min((r for r in mine if r["val_bleu"] >= best - tolerance), key=lambda r: (r["step"], -r["val_bleu"], r["lr"]))
        chosen[method] = {"lr": pick["lr"], "steps": pick["step"], "val_bleu": pick["val_bleu"], "best_val_bleu": best}
    return chosen


def format_choice(methods, chosen):
    """The chosen recipe as the Python of demo.METHODS, with each method's validation BLEU."""
    lines = ["METHODS = ("]
    for method in methods:
        pick = chosen[method.name]
        lora = "" if method.lora is None else f", lora={method.lora!r}"
        lines.append(f"    Method({method.name!r}, {method.folder!r}, lr={pick['lr']:g}, steps={pick['steps']}{lora}),"
                     f"  # validation BLEU {pick['val_bleu']:.1f} (best {pick['best_val_bleu']:.1f})")
    return "\n".join(lines + [")"])
