"""Metrics for generated text: exact match and corpus BLEU (both 0..100, higher is better).

``references`` is one list per example, each holding that example's acceptable
outputs (one or more), e.g. ``[("Aromi is cheap.", "Aromi is a cheap place."), ...]``.
"""


def _as_reference_lists(predictions, references):
    references = [[r] if isinstance(r, str) else list(r) for r in references]
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists; they must pair up one to one")
    if any(not refs for refs in references):
        raise ValueError("an example has no reference. Fix: give every example at least one acceptable output.")
    return references


def exact_match(predictions, references):
    """The percentage of predictions equal (after stripping spaces at both ends) to one of their references."""
    references = _as_reference_lists(predictions, references)
    if not predictions:
        return 0.0
    hits = sum(p.strip() in {r.strip() for r in refs} for p, refs in zip(predictions, references))
    return 100.0 * hits / len(predictions)


def corpus_bleu(predictions, references):
    """Corpus-level BLEU-4 through sacrebleu (its default 13a tokenizer), with every reference of each example.

    Examples may have different numbers of references: sacrebleu's reference
    streams are padded with None, which it skips.
    """
    try:
        import sacrebleu
    except ImportError:
        raise ImportError("corpus_bleu needs sacrebleu. Fix: pip install sacrebleu (or pip install 'minilora[train]').") from None
    references = _as_reference_lists(predictions, references)
    most = max((len(refs) for refs in references), default=1)
    streams = [[refs[k] if k < len(refs) else None for refs in references] for k in range(most)]  # streams[k][i]: k-th ref of example i
    return sacrebleu.corpus_bleu(list(predictions), streams).score
