"""The demo's statistics: per-example BLEU counts add up to sacrebleu's corpus BLEU, and the paired bootstrap
interval covers a known difference about as often as it claims."""
import numpy as np
import pytest

from minilora import data
from minilora.data.metrics import bleu_from_statistics, bleu_statistics, paired_bootstrap
from minilora.data.tasks import e2e_constant_output

EXAMPLES = data.e2e_task(seed=0).train  # 806 inputs with one to three references


def outputs(right, seed):
    """A system that writes the first reference for a share ``right`` of the inputs and the constant output elsewhere."""
    hits = np.random.default_rng(seed).random(len(EXAMPLES)) < right
    return [e.references[0] if hit else e2e_constant_output(e) for e, hit in zip(EXAMPLES, hits)]


def test_statistics_add_up_to_corpus_bleu():
    references = [e.references for e in EXAMPLES]
    for predictions in (outputs(0.5, 0), [e2e_constant_output(e) for e in EXAMPLES]):
        stats = bleu_statistics(predictions, references)
        assert stats.shape == (len(EXAMPLES), 10)
        assert bleu_from_statistics(stats) == pytest.approx(data.corpus_bleu(predictions, references), abs=1e-9)
        assert bleu_from_statistics(stats[:100]) == pytest.approx(data.corpus_bleu(predictions[:100], references[:100]), abs=1e-9)


def test_bootstrap_interval_covers_the_population_difference():
    """The 806 inputs are the population, with a known corpus-BLEU difference between two systems; test sets of
    150 inputs drawn from it give 95 % intervals that should contain that difference in about 95 % of draws."""
    references = [e.references for e in EXAMPLES]
    a = bleu_statistics(outputs(0.8, 1), references)
    b = bleu_statistics(outputs(0.6, 2), references)
    truth = bleu_from_statistics(a) - bleu_from_statistics(b)
    rng = np.random.default_rng(0)
    covered, widths = 0, []
    for i in range(40):
        sample = rng.choice(len(EXAMPLES), size=150, replace=False)
        interval = paired_bootstrap(a[sample], b[sample], resamples=300, seed=i)
        covered += interval["low"] <= truth <= interval["high"]
        widths.append(interval["high"] - interval["low"])
        assert interval["difference"] == pytest.approx(bleu_from_statistics(a[sample]) - bleu_from_statistics(b[sample]))
    assert covered >= 34, covered  # 40 draws at 95 %: fewer than 34 has a chance under 1 %
    assert min(widths) > 0


def test_identical_systems_differ_by_nothing_and_seeds_average():
    references = [e.references for e in EXAMPLES[:50]]
    a = bleu_statistics(outputs(0.8, 1)[:50], references)
    b = bleu_statistics(outputs(0.3, 2)[:50], references)
    same = paired_bootstrap(a, a, resamples=50)
    assert same["difference"] == same["low"] == same["high"] == 0.0
    both = paired_bootstrap(np.stack([a, b]), np.stack([b, b]), resamples=50)
    assert both["difference"] == pytest.approx((bleu_from_statistics(a) - bleu_from_statistics(b)) / 2)


def test_bootstrap_refuses_unpaired_statistics():
    a = np.ones((5, 10), dtype=np.int64)
    with pytest.raises(ValueError, match=r"paired_bootstrap: statistics of shapes \(5, 10\) and \(4, 10\) do not pair up"):
        paired_bootstrap(a, a[:4])
    with pytest.raises(ValueError, match="bleu_statistics: no predictions"):
        bleu_statistics([], [])
