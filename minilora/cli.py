"""The ``minilora`` command: pretrain a small GPT, then generate text with it.

    minilora pretrain                      # the classroom GPT on the synthetic corpus, ~2 minutes on a laptop CPU
    minilora generate --model runs/pretrain --prompt "The cat"
    minilora --backend cupy pretrain       # the same on an NVIDIA GPU

Each subcommand is registered by one small function decorated with
``@command``; it adds its parser and names the function that runs it. A new
subcommand (the LoRA ``demo``, say) is one more such function.
"""
import argparse
import os
import sys

COMMANDS = []  # functions (subparsers) -> None, one per subcommand, in --help order


def command(register):
    """Add a subcommand: ``register(subparsers)`` must create its parser and set_defaults(run=fn)."""
    COMMANDS.append(register)
    return register


# ---- pretrain ----------------------------------------------------------------------------------
CLASSROOM = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=96)


@command
def _register_pretrain(subparsers):
    p = subparsers.add_parser(
        "pretrain", help="pretrain a small GPT on the synthetic English corpus",
        description="Pretrain the 'classroom' GPT (4 layers, 128 channels, 4 heads, 64 characters of context, "
                    "the 96-character vocabulary) on simple generated sentences, with AdamW and a warmup + cosine "
                    "learning rate. The defaults take about two minutes on a laptop CPU. The model is saved as a "
                    "Hugging Face GPT-2 folder (config.json + model.safetensors) plus char_tokenizer.json. "
                    "Running the command again on the same folder resumes from its checkpoint.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", default=os.path.join("runs", "pretrain"), help="output folder")
    p.add_argument("--steps", type=int, default=800, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per step")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=50, help="warmup steps")
    p.add_argument("--seed", type=int, default=0, help="seed for the weights, the corpus and the batches")
    p.add_argument("--sentences", type=int, default=20_000, help="sentences in the generated corpus")
    for name in ("n_layer", "n_head", "n_embd", "block_size"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=CLASSROOM[name], help="model shape")
    p.add_argument("--eval-every", type=int, default=200, help="steps between validation losses")
    p.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint in --out and start over")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    p.set_defaults(run=run_pretrain)


def run_pretrain(args):
    import numpy as np

    from . import data
    from .io import save_json
    from .models import GPT, GPTConfig
    from .optim import AdamW, warmup_cosine
    from .train import CHECKPOINT_FILE, fit, mean_loss

    tokenizer = data.CharTokenizer.printable()
    tokens = np.array(tokenizer.encode(data.pretraining_corpus(args.sentences, seed=args.seed)), dtype=np.int64)
    split = int(0.9 * len(tokens))  # the last tenth of the corpus is held out for the validation loss
    train_tokens, val_tokens = tokens[:split], tokens[split:]
    T = args.block_size
    warmup = min(args.warmup, args.steps)  # a run shorter than the warmup just warms up
    val_idx, val_targets = data.random_windows(val_tokens, 64, T, np.random.default_rng(args.seed + 1))

    config = GPTConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, block_size=T,
                       vocab_size=tokenizer.vocab_size, dropout=0.0, seed=args.seed)
    model = GPT(config)
    optimizer = AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    checkpoint = os.path.join(args.out, CHECKPOINT_FILE)
    if os.path.exists(checkpoint) and not args.fresh:
        print(f"resuming from {checkpoint} (pass --fresh to start over)")
    print(f"pretraining a {model.num_parameters():,}-parameter GPT for {args.steps} steps on {len(train_tokens):,} characters")
    history = fit(
        model, optimizer, lambda rng: data.random_windows(train_tokens, args.batch_size, T, rng), args.steps,
        seed=args.seed, schedule=lambda s: warmup_cosine(s, warmup, args.steps, args.lr, args.lr / 10), clip=1.0,
        eval_every=args.eval_every, eval_fn=lambda m: {"val_loss": mean_loss(m, val_idx, val_targets)},
        checkpoint_dir=args.out, checkpoint_every=args.checkpoint_every, resume=not args.fresh,
        progress=not args.no_progress,
    )
    model.save_pretrained(args.out)
    tokenizer.save(os.path.join(args.out, data.CHAR_TOKENIZER_FILE))
    save_json(os.path.join(args.out, "history.json"), history)
    last = history[-1] if history else {}
    print(f"final loss {last.get('loss', float('nan')):.4f}, validation loss {last.get('val_loss', float('nan')):.4f}")
    print(f"saved the model to {args.out}/ (try: minilora generate --model {args.out} --prompt 'The ')")


# ---- generate ----------------------------------------------------------------------------------
@command
def _register_generate(subparsers):
    p = subparsers.add_parser(
        "generate", help="continue a prompt with a saved model",
        description="Load a model folder (from 'minilora pretrain', or any Hugging Face GPT-2 folder with a "
                    "tokenizer) and continue --prompt, sampling with --temperature and --top-k, or greedily.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", required=True, help="model folder (config.json, model.safetensors and a tokenizer)")
    p.add_argument("--prompt", default="The ", help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to add")
    p.add_argument("--temperature", type=float, default=0.8, help="below 1: safer choices; above 1: wilder")
    p.add_argument("--top-k", type=int, default=None, help="sample only among the k likeliest tokens")
    p.add_argument("--greedy", action="store_true", help="always take the likeliest token (ignores temperature, top-k)")
    p.add_argument("--seed", type=int, default=0, help="seed for sampling")
    p.set_defaults(run=run_generate)


def run_generate(args):
    import numpy as np

    from .data import load_tokenizer
    from .models import GPT

    model = GPT.from_pretrained(args.model)
    tokenizer = load_tokenizer(args.model)
    prompt = tokenizer.encode(args.prompt)
    if not prompt:
        raise SystemExit("generate: the prompt is empty. Fix: pass --prompt with at least one character.")
    idx = np.array([prompt], dtype=np.int64)  # (1, T)
    out = model.generate(idx, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                         greedy=args.greedy, rng=args.seed)
    print(tokenizer.decode(out[0]))


# ---- demo -------------------------------------------------------------------------------------
@command
def _register_demo(subparsers):
    from .demo import add_demo_arguments, run_demo

    p = subparsers.add_parser(
        "demo", help="the main job: pretrain a small GPT, then adapt it by full fine-tuning, LoRA r=8 and LoRA r=1",
        description="Pretrain a small GPT on the synthetic corpus (or reuse the cached one), adapt it to the "
                    "E2E-style data-to-text task three ways (full fine-tuning, LoRA r=8 on q and v, LoRA r=1), "
                    "and print one table: trainable parameters, file bytes, BLEU and exact match, step time, "
                    "peak memory, and inference latency of the base, unmerged and merged models. About five "
                    "minutes on a 2-core laptop CPU. See docs/demo.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_demo_arguments(p)
    p.set_defaults(run=run_demo)


# ---- entry point -------------------------------------------------------------------------------
def build_parser():
    parser = argparse.ArgumentParser(
        prog="minilora",
        description="LoRA from first principles in NumPy. The main job is 'minilora demo'; to play with "
                    "a model of your own, 'minilora pretrain', then 'minilora generate --model runs/pretrain'. "
                    "Each subcommand has its own --help.",
    )
    parser.add_argument("--backend", choices=["numpy", "cupy"], default=None,
                        help="numpy (CPU) or cupy (NVIDIA GPU); default: $MINILORA_BACKEND or numpy")
    subparsers = parser.add_subparsers(title="subcommands", dest="command", metavar="COMMAND")
    for register in COMMANDS:
        register(subparsers)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.backend:
        from . import backend
        backend.set_backend(args.backend)
    args.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
