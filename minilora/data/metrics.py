"""Metrics for generated text: exact match and corpus BLEU (both 0..100, higher is better).

``references`` is one list per example, each holding that example's acceptable
outputs (one or more), e.g. ``[("Aromi is cheap.", "Aromi is a cheap place."), ...]``.

Corpus BLEU is not a mean over examples: it is computed from n-gram counts summed
over the corpus. ``bleu_statistics`` keeps those counts per example, so that a
resampled corpus (``paired_bootstrap``) is scored as sacrebleu would score it.
"""
import numpy as np


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


def _bleu():
    try:
        from sacrebleu.metrics import BLEU
    except ImportError:
        raise ImportError("corpus_bleu needs sacrebleu. Fix: pip install sacrebleu (or pip install 'minilora[train]').") from None
    return BLEU()


def corpus_bleu(predictions, references):
    """Corpus-level BLEU-4 through sacrebleu (its default 13a tokenizer), with every reference of each example.

    Examples may have different numbers of references: sacrebleu's reference
    streams are padded with None, which it skips.
    """
    return _bleu().corpus_score(list(predictions), _streams(predictions, references)).score


def _streams(predictions, references):
    """sacrebleu's reference streams: streams[k][i] is the k-th reference of example i, or None."""
    references = _as_reference_lists(predictions, references)
    most = max((len(refs) for refs in references), default=1)
    return [[refs[k] if k < len(refs) else None for refs in references] for k in range(most)]


def bleu_statistics(predictions, references):
    """Per-example BLEU counts, (N, 10) int: output length, closest reference length, then
    matching and total n-grams for n = 1..4 (sacrebleu's own segment statistics).

    ``bleu_from_statistics(stats)`` equals ``corpus_bleu(predictions, references)``.
    """
    if not predictions:
        raise ValueError("bleu_statistics: no predictions. Fix: score at least one example.")
    # The method sacrebleu's own paired bootstrap (sacrebleu.significance) calls; it is not public API.
    stats = _bleu()._extract_corpus_statistics(list(predictions), _streams(predictions, references))
    return np.asarray(stats, dtype=np.int64)


def bleu_from_statistics(stats):
    """Corpus BLEU (0..100) of the examples whose rows of ``bleu_statistics`` are in ``stats`` (N, 10)."""
    return _bleu()._compute_score_from_stats(np.asarray(stats).sum(axis=0)).score


def paired_bootstrap(stats_a, stats_b, resamples=1000, confidence=0.95, seed=0):
    """The corpus-BLEU difference a - b and a percentile bootstrap interval for it, resampling examples.

    stats_a, stats_b: ``bleu_statistics`` of two systems on the same N examples, (N, 10),
    or one such array per seed, (S, N, 10). Each resample draws N examples with
    replacement and uses the same draw for both systems and every seed (the pairing),
    then takes the difference of corpus BLEU averaged over seeds. The interval covers
    the uncertainty from which examples the test set holds, not from the seeds.

    Returns {"difference", "low", "high", "resamples", "confidence"}.
    """
    a, b = np.asarray(stats_a), np.asarray(stats_b)
    if a.ndim == 2:
        a, b = a[None], b[None]
    if a.shape != b.shape or a.ndim != 3 or a.shape[1] == 0:
        raise ValueError(f"paired_bootstrap: statistics of shapes {np.shape(stats_a)} and {np.shape(stats_b)} do not pair up. "
                         "Fix: pass bleu_statistics of both systems on the same examples, (N, 10) or (seeds, N, 10).")
    n, score = a.shape[1], _bleu()._compute_score_from_stats  # score(summed statistics (10,)) -> BLEUScore
    counts = np.stack([np.bincount(row, minlength=n) for row in np.random.default_rng(seed).integers(0, n, size=(resamples, n))])  # (R, N)

    def difference(weights):  # weights (N,): how often each example is drawn
        return np.mean([score(weights @ sa).score - score(weights @ sb).score for sa, sb in zip(a, b)])

    draws = np.array([difference(w) for w in counts])
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    return {"difference": float(difference(np.ones(n, dtype=np.int64))), "low": float(low), "high": float(high),
            "resamples": resamples, "confidence": confidence}
