"""`minilora finetune`: teach SmolLM2-135M-Instruct the demo's data-to-text task with LoRA, in its chat template.

    minilora finetune                            # LoRA r=8 on q_proj and v_proj; the adapter goes to runs/finetune
    minilora chat --adapter runs/finetune --system "Write one sentence about the restaurant from the data."

The task (data/tasks.py, e2e_task) turns a meaning representation into a sentence:
"Cotto|food[Thai]" -> "Cotto serves Thai food.". The instruct model does not know
this format: it answers at length, or in its own words. Each example becomes one
conversation, trained on the reply only:

    <|im_start|>system\\n{SYSTEM}<|im_end|>\\n<|im_start|>user\\nCotto|food[Thai]<|im_end|>\\n<|im_start|>assistant\\n
    Cotto serves Thai food.<|im_end|>          <- the targets; every other position is -100 (no loss)

Batches pad on the right. With a causal mask that needs no attention mask: a real
token attends only to positions before it, never to the pads after it, and the
pads' own outputs carry no loss (target -100). (Padding on the left, as batched
generation would, needs a mask; generation here runs one prompt at a time.)

Before and after training, the model answers N held-out prompts greedily; the
command prints BLEU and exact match against the references, and a few answers.
The adapter is saved in PEFT's Llama layout (lora/peft_llama.py), with
finetune.json (settings, losses, scores, answers) beside it.
"""
import os
import shlex
import time

import numpy as np

from .chat import add_model_arguments, load_model, reply
from .cli_options import CommandError, int_at_least, positive_float, require_extras, user_input

SYSTEM = "Write one sentence about the restaurant from the data."
# Chosen on the validation split (docs/llama.md, "Fine-tuning"); the test split is only scored.
RECIPE = {"r": 8, "lora_alpha": 16, "lr": 3e-3, "steps": 100, "batch_size": 4, "warmup": 10, "clip": 1.0}
TARGETS = {"q_proj,v_proj": ["q_proj", "v_proj"], "all-linear": "all-linear"}


def messages(example, answer=None):
    """The conversation of one example: the system message, the data as the user's turn, and the answer if given."""
    from .data.tasks import SEPARATOR

    turns = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": example.prompt.removesuffix(SEPARATOR)}]
    return turns + ([{"role": "assistant", "content": answer}] if answer is not None else [])


def encode_example(tokenizer, example, answer):
    """(ids, number of prompt ids): the chat template's generation prompt, then the answer and the end-of-turn token.

    The two parts are encoded separately, so the boundary between prompt and reply is
    exact (the chat template writes the same text, tests/test_finetune.py checks it).
    """
    prompt = tokenizer.encode(tokenizer.apply_chat_template(messages(example), add_generation_prompt=True))
    return prompt + tokenizer.encode(answer + tokenizer.eos_token), len(prompt)


def make_batch(rows, pad_id):
    """Right-padded (idx, targets), both (B, T - 1), from rows of (ids, n_prompt); T is the longest row.

    targets[b, t] is ids[t + 1] where that token belongs to the reply, else -100.
    No attention mask: see the top of this file.
    """
    T = max(len(ids) for ids, _ in rows)
    idx = np.full((len(rows), T - 1), pad_id, dtype=np.int64)  # (B, T - 1)
    targets = np.full((len(rows), T - 1), -100, dtype=np.int64)  # (B, T - 1)
    for b, (ids, n_prompt) in enumerate(rows):
        idx[b, :len(ids) - 1] = ids[:-1]
        targets[b, n_prompt - 1:len(ids) - 1] = ids[n_prompt:]  # the reply's tokens, predicted from the one before
    return idx, targets


def batch_sampler(tokenizer, examples, batch_size, context):
    """get_batch(rng) for fit: ``batch_size`` random examples, each with a random one of its references."""
    encoded = [[encode_example(tokenizer, e, r) for r in e.references] for e in examples]
    longest = max(len(ids) for refs in encoded for ids, _ in refs)
    if longest > context:
        raise CommandError(f"a training example is {longest} tokens, longer than the model's context of {context}. "
                           "Fix: a model with a longer context (max_position_embeddings)")

    def get_batch(rng):
        picks = rng.integers(0, len(encoded), batch_size)
        return make_batch([encoded[i][rng.integers(0, len(encoded[i]))] for i in picks], tokenizer.eos_token_id)
    return get_batch


def answers(model, tokenizer, examples, max_new_tokens):
    """The model's greedy reply to each example's prompt."""
    return [reply(model, tokenizer, messages(e), max_new_tokens) for e in examples]


def scores(predictions, examples):
    from .data import corpus_bleu, exact_match

    references = [e.references for e in examples]
    return {"bleu": corpus_bleu(predictions, references), "exact_match": exact_match(predictions, references)}


def _cell(text, width=44):
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def table(examples, before, after, show):
    """A text table of the first ``show`` examples: input, the reply before and after, a reference."""
    rows = [("input", "before", "after", "a reference")]
    rows += [(_cell(e.prompt.rstrip("="), 32), _cell(b), _cell(a), _cell(e.references[0]))
             for e, b, a in list(zip(examples, before, after))[:show]]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join([lines[0], "-+-".join("-" * w for w in widths)] + lines[1:])


DESCRIPTION = (
    "Teach SmolLM2-135M-Instruct the demo's data-to-text task (a meaning representation such as "
    "'Cotto|food[Thai]' -> one sentence) with LoRA, in its chat template, on the frozen model. Prints BLEU and "
    "exact match on held-out prompts before and after, and a few answers side by side; saves the adapter in "
    "PEFT's layout (--out). The defaults were chosen on the validation split. See docs/llama.md."
)


def add_finetune_arguments(parser):
    add_model_arguments(parser)
    parser.add_argument("--out", default=os.path.join("runs", "finetune"), help="folder for the adapter and finetune.json")
    parser.add_argument("--steps", type=int_at_least(1), default=RECIPE["steps"], help="optimizer steps")
    parser.add_argument("--batch-size", type=int_at_least(1), default=RECIPE["batch_size"], help="conversations per step")
    parser.add_argument("--lr", type=positive_float, default=RECIPE["lr"], help="learning rate after the warmup")
    parser.add_argument("--r", type=int_at_least(1), default=RECIPE["r"], help="LoRA rank")
    parser.add_argument("--lora-alpha", type=positive_float, default=None,
                        help=f"LoRA alpha (the scale is alpha / r); default: {RECIPE['lora_alpha'] // RECIPE['r']} r")
    parser.add_argument("--target-modules", choices=sorted(TARGETS), default="q_proj,v_proj",
                        help="q_proj,v_proj: the attention's query and value projections (the paper's choice); all-linear: every projection of every layer")
    parser.add_argument("--eval-split", choices=("validation", "test"), default="test",
                        help="the held-out prompts scored before and after: choose settings on validation, report test")
    parser.add_argument("--eval-examples", type=int_at_least(1), default=30, help="held-out prompts scored")
    parser.add_argument("--eval-every", type=int_at_least(1), default=None,
                        help="also score the held-out prompts every N steps (to choose --steps on the validation split)")
    parser.add_argument("--show", type=int_at_least(0), default=5, help="answers shown side by side")
    parser.add_argument("--max-new-tokens", type=int_at_least(1), default=32, help="longest answer while scoring")
    parser.add_argument("--seed", type=int_at_least(0), default=0, help="seed for the adapter's A and the batches")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")


def run_finetune(args):
    from .data.tasks import e2e_task
    from .io import save_json
    from .lora import LoraConfig, count_parameters, get_peft_model, save_peft_llama
    from .optim import AdamW
    from .train import fit

    require_extras("finetune", ["safetensors", "sacrebleu"] + ([] if args.no_progress else ["tqdm"]))
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise CommandError(f"--out {args.out} is a file, not a folder. Fix: pass a folder (it is created if needed)")
    path, model, tokenizer = load_model("finetune", args.model, args.base)
    splits = e2e_task(seed=0)
    held_out = getattr(splits, args.eval_split)[:args.eval_examples]
    get_batch = batch_sampler(tokenizer, splits.train, args.batch_size, model.config.max_position_embeddings)
    with user_input("--out", args.out):
        os.makedirs(args.out, exist_ok=True)  # now, so that a folder that cannot be made fails before training

    print(f"{path.name}: {model.num_parameters():,} parameters; scoring {len(held_out)} {args.eval_split} prompts "
          "before training", flush=True)
    clock = time.perf_counter()
    before = answers(model, tokenizer, held_out, args.max_new_tokens)
    before_s = time.perf_counter() - clock

    alpha = args.lora_alpha if args.lora_alpha is not None else RECIPE["lora_alpha"] // RECIPE["r"] * args.r
    config = LoraConfig(r=args.r, lora_alpha=alpha, target_modules=TARGETS[args.target_modules])
    with user_input("--r"):
        lora_model = get_peft_model(model, config, rng=np.random.default_rng(args.seed))
    trainable, total = count_parameters(lora_model)
    print(f"training LoRA r={args.r} on {args.target_modules} ({trainable:,} of {total:,} parameters) for "
          f"{args.steps} steps of {args.batch_size} conversations", flush=True)

    def scorer(m):  # --eval-every: the held-out scores during training
        return scores(answers(m, tokenizer, held_out, args.max_new_tokens), held_out)

    optimizer = AdamW([p for p in lora_model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    clock = time.perf_counter()
    history = fit(lora_model, optimizer, get_batch, args.steps, seed=args.seed, clip=RECIPE["clip"],
                  schedule=lambda s: args.lr * min(1.0, (s + 1) / RECIPE["warmup"]), progress=not args.no_progress,
                  eval_every=args.eval_every, eval_fn=scorer if args.eval_every else None)
    train_s = time.perf_counter() - clock

    clock = time.perf_counter()
    after = answers(lora_model, tokenizer, held_out, args.max_new_tokens)
    after_s = time.perf_counter() - clock
    results = {"before": scores(before, held_out), "after": scores(after, held_out)}
    save_peft_llama(lora_model, args.out, base_model_name_or_path=path.name)
    first, last = np.mean([h["loss"] for h in history[:10]]), np.mean([h["loss"] for h in history[-10:]])
    save_json(os.path.join(args.out, "finetune.json"), {
        "model": path.name, "settings": {k: v for k, v in vars(args).items() if k not in ("run", "debug")},
        "lora_alpha": alpha, "seconds": {"score_before": before_s, "train": train_s, "score_after": after_s},
        "scores": results, "history": history,
        "answers": [{"input": e.prompt, "before": b, "after": a, "references": list(e.references)}
                    for e, b, a in zip(held_out, before, after)],
    })

    print(f"\nloss {first:.3f} -> {last:.3f} (mean of the first and last 10 steps); {train_s:.0f} s of training "
          f"({1000 * train_s / args.steps:.0f} ms per step), scoring {before_s:.0f} s before and {after_s:.0f} s after\n")
    if args.show:
        print(table(held_out, before, after, args.show) + "\n")
    print(f"{len(held_out)} {args.eval_split} prompts   BLEU   exact match %")
    for name in ("before", "after"):
        print(f"{name:<{len(str(len(held_out))) + len(args.eval_split) + 9}}   {results[name]['bleu']:4.1f}   "
              f"{results[name]['exact_match']:5.1f}")
    print(f"\nsaved the adapter to {args.out}/ (PEFT's layout). Try: minilora chat --adapter {shlex.quote(args.out)} "
          f"--system {shlex.quote(SYSTEM)}")
