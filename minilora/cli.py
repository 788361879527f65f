"""The ``minilora`` command: pretrain a small GPT, then generate text with it.

    minilora pretrain                      # the classroom GPT on the synthetic corpus, ~2 minutes on a laptop CPU
    minilora generate --model runs/pretrain --prompt "The cat"
    minilora pretrain --backend cupy       # the same on an NVIDIA GPU (--backend also works before the subcommand)

Each subcommand is registered by one small function decorated with
``@command``; it adds its parser and names the function that runs it. A new
subcommand (the LoRA ``demo``, say) is one more such function.

A mistake the user can fix (a bad path, a shape that does not divide, a missing
package) is a ``CommandError``: ``main`` prints it as one line and exits with its
status (2 for usage errors, as argparse). Any other exception is a bug and keeps
its traceback; ``--debug`` shows the traceback of a CommandError too.
"""
import argparse
import json
import os
import shlex
import sys

from .cli_options import (CommandError, MissingExtraError, add_backend_argument, int_at_least,
                          positive_float, require_extras, user_input)

COMMANDS = []  # functions (subparsers) -> None, one per subcommand, in --help order


def command(register):
    """Add a subcommand: ``register(subparsers)`` must create its parser and set_defaults(run=fn)."""
    COMMANDS.append(register)
    return register


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors are one line (the usage itself is one --help away)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" only where X says something: not to flags, required options, None, or help that gives it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.required or action.default is None or action.default is False or "default" in text:
            return text
        return super()._get_help_string(action)


def add_debug_argument(parser, default=argparse.SUPPRESS):
    parser.add_argument("--debug", action="store_true", default=default,
                        help="on an error, show the full Python traceback, not just one line")


def add_subparser(subparsers, name, **kwargs):
    """A subcommand's parser with --debug; each subcommand adds --backend itself (the demo's parser has it)."""
    parser = subparsers.add_parser(name, formatter_class=HelpFormatter, **kwargs)
    add_debug_argument(parser)
    return parser


# ---- pretrain ----------------------------------------------------------------------------------
CLASSROOM = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=96)


@command
def _register_pretrain(subparsers):
    p = add_subparser(
        subparsers, "pretrain", help="pretrain a small GPT on the synthetic English corpus",
        description="Pretrain the 'classroom' GPT (4 layers, 128 channels, 4 heads, 64 characters of context, "
                    "the 96-character vocabulary) on simple generated sentences, with AdamW and a warmup + cosine "
                    "learning rate. The defaults take about two minutes on a laptop CPU. The model is saved as a "
                    "Hugging Face GPT-2 folder (config.json + model.safetensors) plus char_tokenizer.json. "
                    "Running the command again on the same folder resumes from its checkpoint up to --steps.",
    )
    add_backend_argument(p)
    p.add_argument("--out", default=os.path.join("runs", "pretrain"), help="output folder")
    p.add_argument("--steps", type=int_at_least(1), default=800,
                   help="total optimizer steps: a resumed run continues up to this number")
    p.add_argument("--batch-size", type=int_at_least(1), default=32, help="sequences per step")
    p.add_argument("--lr", type=positive_float, default=2e-3, help="peak learning rate")
    p.add_argument("--warmup", type=int_at_least(0), default=50, help="warmup steps")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="seed for the weights, the corpus and the batches")
    p.add_argument("--sentences", type=int_at_least(1), default=20_000, help="sentences in the generated corpus")
    for name, what in (("n_layer", "Transformer blocks"), ("n_head", "attention heads, a divisor of --n-embd"),
                       ("n_embd", "channels"), ("block_size", "characters of context")):
        p.add_argument("--" + name.replace("_", "-"), type=int_at_least(1), default=CLASSROOM[name], help=what)
    p.add_argument("--eval-every", type=int_at_least(1), default=200, help="steps between validation losses")
    p.add_argument("--checkpoint-every", type=int_at_least(1), default=200, help="steps between checkpoints")
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

    require_extras("pretrain", ["safetensors"] + ([] if args.no_progress else ["tqdm"]))
    if args.n_embd % args.n_head:
        divisors = [h for h in range(1, args.n_embd + 1) if args.n_embd % h == 0]
        raise CommandError(f"--n-embd {args.n_embd} is not divisible by --n-head {args.n_head}: each head gets "
                           f"n_embd / n_head channels. Fix: pick --n-head from {divisors[:12]}")
    tokenizer = data.CharTokenizer.printable()
    T = args.block_size
    with user_input("the model's shape"):
        config = GPTConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, block_size=T,
                           vocab_size=tokenizer.vocab_size, dropout=0.0, seed=args.seed)
        model = GPT(config)

    check_out_folder(args.out)
    checkpoint = os.path.join(args.out, CHECKPOINT_FILE)
    done = 0
    if os.path.exists(checkpoint) and not args.fresh:
        done = _checkpoint_step(checkpoint, model)
        nothing_to_do = (f"already trained {done} of {args.steps} steps; nothing to do (use --steps N with N > {done}, "
                         f"--fresh to start over, or a new --out)")
        if done > args.steps:
            raise CommandError(f"{args.out}: {nothing_to_do}")
        if done == args.steps:
            print(f"{args.out}: {nothing_to_do}")
            return
        print(f"resuming from {checkpoint} at step {done} of {args.steps} (--steps is the total; pass --fresh to start over)")

    tokens = np.array(tokenizer.encode(data.pretraining_corpus(args.sentences, seed=args.seed)), dtype=np.int64)
    split = int(0.9 * len(tokens))  # the last tenth of the corpus is held out for the validation loss
    train_tokens, val_tokens = tokens[:split], tokens[split:]
    if len(val_tokens) < T + 1:
        raise CommandError(f"--sentences {args.sentences} makes a validation split of {len(val_tokens)} characters, "
                           f"fewer than --block-size + 1 = {T + 1}. Fix: more --sentences or a smaller --block-size")
    with user_input("--out", args.out):
        os.makedirs(args.out, exist_ok=True)  # now, so that a folder that cannot be made fails before training, not after
    warmup = min(args.warmup, args.steps)  # a run shorter than the warmup just warms up
    val_idx, val_targets = data.random_windows(val_tokens, 64, T, np.random.default_rng(args.seed + 1))

    optimizer = AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    print(f"pretraining a {model.num_parameters():,}-parameter GPT for {args.steps - done} steps "
          f"(to step {args.steps}) on {len(train_tokens):,} characters")
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
    print(f"saved the model to {args.out}/ (try: minilora generate --model {shlex.quote(args.out)} --prompt 'The ')")


def check_out_folder(path):
    """Refuse an --out that exists but is not a folder, before any work."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise CommandError(f"--out {path} is a file, not a folder. Fix: pass a folder (it is created if needed)")


def _checkpoint_step(path, model):
    """The steps already done by the training checkpoint at ``path``, after checking that it fits ``model``."""
    from .io import load_safetensors

    fix = "Fix: pass the options of the run that wrote it, --fresh to start over, or a new --out"
    with user_input("--out", os.path.dirname(path)):
        arrays, metadata = load_safetensors(path)
    try:
        step = int(json.loads(metadata["step"]))
    except (KeyError, ValueError):
        raise CommandError(f"{path} is not a minilora training checkpoint (no step in its metadata). {fix}") from None
    found = {k[len("model."):]: tuple(a.shape) for k, a in arrays.items() if k.startswith("model.")}
    expected = {k: tuple(a.shape) for k, a in model.state_dict().items()}
    if found != expected:
        differ = sorted(k for k in expected.keys() | found.keys() if found.get(k) != expected.get(k))
        raise CommandError(f"{path} holds a model of another shape than --n-layer/--n-head/--n-embd/--block-size "
                           f"give ({differ[0]}: {found.get(differ[0])} in the file, {expected.get(differ[0])} here). {fix}")
    return step


# ---- generate ----------------------------------------------------------------------------------
@command
def _register_generate(subparsers):
    p = add_subparser(
        subparsers, "generate", help="continue a prompt with a saved model",
        description="Load a model folder (from 'minilora pretrain' or 'minilora demo', or any Hugging Face GPT-2 "
                    "folder with a tokenizer), optionally with a LoRA adapter on top, and continue --prompt, "
                    "sampling with --temperature and --top-k, or greedily.",
    )
    add_backend_argument(p)
    p.add_argument("--model", required=True, metavar="DIR",
                   help="model folder: config.json, model.safetensors and a tokenizer (char_tokenizer.json or tokenizer.json)")
    p.add_argument("--adapter", metavar="DIR", default=None,
                   help="a LoRA adapter folder (adapter_config.json + adapter_model.safetensors) trained on --model, "
                        "e.g. the demo's lora_r8; without it, the model alone")
    p.add_argument("--prompt", default="The ", help="text to continue (default: %(default)r)")
    p.add_argument("--max-new-tokens", type=int_at_least(1), default=200, help="tokens to add")
    p.add_argument("--temperature", type=positive_float, default=0.8, help="below 1: safer choices; above 1: wilder")
    p.add_argument("--top-k", type=int_at_least(1), default=None,
                   help="sample only among the k likeliest tokens; without it, among all tokens")
    p.add_argument("--greedy", action="store_true", help="always take the likeliest token (ignores temperature, top-k)")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="seed for sampling")
    p.set_defaults(run=run_generate)


def run_generate(args):
    import numpy as np

    from . import lora
    from .data import load_tokenizer
    from .models import GPT

    require_extras("generate", ["safetensors"])
    _check_model_folder(args.model)
    with user_input("--model", args.model):
        model = GPT.from_pretrained(args.model)
        try:
            tokenizer = load_tokenizer(args.model)
        except ImportError as error:  # tokenizer.json needs the tokenizers package
            raise MissingExtraError(str(error)) from None
    if args.adapter is not None:
        if not os.path.isdir(args.adapter):
            raise CommandError(f"--adapter {args.adapter}: no such folder. Fix: pass a folder that holds adapter_config.json")
        with user_input("--adapter", args.adapter):
            model = lora.from_pretrained(model, args.adapter)
    if args.top_k is not None and args.top_k > model.config.vocab_size:
        raise CommandError(f"--top-k {args.top_k} is more than the model's {model.config.vocab_size} tokens. "
                           f"Fix: pick --top-k from 1 to {model.config.vocab_size}")
    with user_input("--prompt"):
        prompt = tokenizer.encode(args.prompt)
    if not prompt:
        raise CommandError("the prompt is empty. Fix: pass --prompt with at least one character")
    idx = np.array([prompt], dtype=np.int64)  # (1, T)
    out = model.generate(idx, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                         greedy=args.greedy, rng=args.seed)
    print(tokenizer.decode(out[0]))


def _check_model_folder(path):
    """Raise a CommandError that says what to pass instead when ``path`` is not a model folder."""
    if not os.path.isdir(path):
        raise CommandError(f"--model {path}: no such folder. Fix: pass a folder written by 'minilora pretrain' "
                           "(runs/pretrain by default) or 'minilora demo'")
    if os.path.exists(os.path.join(path, "config.json")):
        return
    if os.path.exists(os.path.join(path, "adapter_config.json")):
        raise CommandError(f"--model {path} holds a LoRA adapter, not a model. Fix: --model BASE --adapter {path}, "
                           "where BASE is the model it was trained on (the demo prints it)")
    inside = sorted(os.path.relpath(folder, path) for folder, _, files in os.walk(path)
                    if "config.json" in files and folder.count(os.sep) - path.count(os.sep) <= 2)
    hint = f"; model folders inside it: {', '.join(inside[:5])}" if inside else ""
    if os.path.exists(os.path.join(path, "checkpoint.safetensors")):
        hint = f"; it holds a training checkpoint: run 'minilora pretrain --out {path}' again to finish and save the model"
    raise CommandError(f"--model {path} holds no config.json, so it is not a model folder{hint}. "
                       "Fix: pass the folder that holds config.json and model.safetensors")


# ---- demo -------------------------------------------------------------------------------------
@command
def _register_demo(subparsers):
    from .demo import add_demo_arguments

    p = add_subparser(
        subparsers, "demo", help="the main job: pretrain a small GPT, then adapt it by full fine-tuning, LoRA r=8 and LoRA r=1",
        description="Pretrain a small GPT on the synthetic corpus (or reuse the cached one), adapt it to the "
                    "E2E-style data-to-text task three ways (full fine-tuning, LoRA r=8 on q and v, LoRA r=1), "
                    "and print one table: trainable parameters, file bytes, BLEU and exact match, step time, "
                    "peak memory, and inference latency of the base, unmerged and merged models. About five "
                    "minutes on a 2-core CPU. Each method's learning rate and steps were chosen on the validation "
                    "split by --search. See docs/demo.md.",
    )
    add_demo_arguments(p)
    p.set_defaults(run=run_demo_command)


def run_demo_command(args):
    check_out_folder(args.out)
    if args.search:
        from .demo_search import run_search
        run_search(args)
    else:
        from .demo import run_demo
        run_demo(args)


# ---- paper ------------------------------------------------------------------------------------
@command
def _register_paper(subparsers):
    from .paper import DESCRIPTION, add_paper_arguments, run_paper

    p = add_subparser(subparsers, "paper", help="measure the LoRA paper's claims at small scale: report, plots, seeds",
                      description=DESCRIPTION)
    add_paper_arguments(p)
    p.set_defaults(run=run_paper)


# ---- assignment -------------------------------------------------------------------------------
@command
def _register_assignment(subparsers):
    from .assignment.cli import DESCRIPTION, add_assignment_actions

    p = add_subparser(subparsers, "assignment", help="classroom exercises: make a student copy, check, grade",
                      description=DESCRIPTION)
    add_assignment_actions(p, add_subparser)


# ---- finetune, chat: SmolLM2-135M-Instruct ------------------------------------------------------
@command
def _register_finetune(subparsers):
    from .finetune import DESCRIPTION, add_finetune_arguments, run_finetune

    p = add_subparser(subparsers, "finetune", help="teach SmolLM2-135M-Instruct the data-to-text task with LoRA (GGUF file)",
                      description=DESCRIPTION)
    add_finetune_arguments(p)
    p.set_defaults(run=run_finetune)


@command
def _register_chat(subparsers):
    from .chat import DESCRIPTION, add_chat_arguments, run_chat

    p = add_subparser(subparsers, "chat", help="chat with SmolLM2-135M-Instruct, optionally with a LoRA adapter",
                      description=DESCRIPTION)
    add_chat_arguments(p)
    p.set_defaults(run=run_chat)


# ---- entry point -------------------------------------------------------------------------------
def build_parser():
    parser = ArgumentParser(
        prog="minilora", formatter_class=HelpFormatter,
        description="LoRA from first principles in NumPy. The main job is 'minilora demo'; to play with "
                    "a model of your own, 'minilora pretrain', then 'minilora generate --model runs/pretrain'. "
                    "Each subcommand has its own --help.",
    )
    add_backend_argument(parser, default=None)
    add_debug_argument(parser, default=False)
    subparsers = parser.add_subparsers(title="subcommands", dest="command", metavar="COMMAND")
    for register in COMMANDS:
        register(subparsers)
    return parser


def _select_backend(name):
    """Switch to --backend ``name``, or check that $MINILORA_BACKEND can be used when there is no --backend."""
    from . import backend

    try:
        if name:
            backend.set_backend(name)
        else:
            backend.get_backend()
    except (ValueError, RuntimeError) as error:
        raise CommandError(str(error)) from error


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        _select_backend(args.backend)
        args.run(args)
    except CommandError as error:
        if args.debug:
            raise
        print(f"minilora {args.command}: error: {error}", file=sys.stderr)
        return error.status
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"minilora {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
