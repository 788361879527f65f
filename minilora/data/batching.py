"""Batches of (idx, targets) for next-token training: int64 arrays of shape (B, T) on the host.

targets[b, t] is the token that follows idx[b, t]. Positions whose target is
-100 add nothing to the loss (cross_entropy's ignore_index): the prompt of a
conditional task and the padding after a short example.

Every sampler takes a ``numpy.random.Generator`` and draws only from it, so the
training loop can save that generator's state and resume the same sequence.
"""
import numpy as np

IGNORE_INDEX = -100


def random_windows(tokens, batch_size, block_size, rng):
    """B random windows of a long token stream (pretraining).  tokens (N,) -> idx, targets (B, T)."""
    tokens = np.asarray(tokens)
    if len(tokens) < block_size + 1:
        raise ValueError(f"random_windows: the stream has {len(tokens)} tokens, fewer than block_size + 1 = {block_size + 1}. Fix: use more text or a smaller block.")
    starts = rng.integers(0, len(tokens) - block_size, size=batch_size)  # (B,)
    positions = starts[:, None] + np.arange(block_size)  # (B, T)
    return tokens[positions].astype(np.int64), tokens[positions + 1].astype(np.int64)


def encode_examples(examples, tokenizer, block_size, eos="\n"):
    """Every (prompt, reference) pair as one row: prompt + reference + eos, with the prompt masked.

    examples: Example objects (each reference becomes its own row).
    Returns idx, targets of shape (N, T), T = the longest row minus one (at most block_size);
    idx is padded with the eos id, targets with -100.
    """
    eos_ids = tokenizer.encode(eos)
    rows = []
    for example in examples:
        prompt = tokenizer.encode(example.prompt)
        for reference in example.references:
            sequence = prompt + tokenizer.encode(reference) + eos_ids
            if len(sequence) > block_size + 1:
                raise ValueError(
                    f"encode_examples: {example.prompt + reference!r} is {len(sequence)} tokens with its end mark, "
                    f"more than block_size + 1 = {block_size + 1}. Fix: build the task with max_len={block_size + 1}, "
                    "or use a model with a larger block size."
                )
            rows.append((sequence, len(prompt)))
    if not rows:
        raise ValueError("encode_examples: no examples given")
    T = max(len(sequence) for sequence, _ in rows) - 1
    idx = np.full((len(rows), T), eos_ids[0], dtype=np.int64)  # (N, T)
    targets = np.full((len(rows), T), IGNORE_INDEX, dtype=np.int64)  # (N, T)
    for n, (sequence, prompt_len) in enumerate(rows):
        L = len(sequence) - 1
        idx[n, :L] = sequence[:-1]
        targets[n, :L] = sequence[1:]
        targets[n, : prompt_len - 1] = IGNORE_INDEX  # position t predicts token t + 1: mask while that is still prompt
    return idx, targets


def random_rows(idx, targets, batch_size, rng):
    """B rows drawn at random (with replacement) from encoded examples.  (N, T) -> (B, T) each."""
    rows = rng.integers(0, len(idx), size=batch_size)  # (B,)
    return idx[rows], targets[rows]
