"""Tokenizers, the synthetic corpus and tasks (determinism, disjoint splits), metrics and batching."""
import numpy as np
import pytest

from minilora import data


def test_char_tokenizer_round_trip_and_save(tmp_path):
    tok = data.CharTokenizer.printable()
    assert tok.vocab_size == 96 and tok.eos_id == 0
    text = data.pretraining_corpus(50) + "name[x]|{~}"
    assert tok.decode(tok.encode(text)) == text
    tok.save(tmp_path / "t.json")
    assert data.load_tokenizer(tmp_path / "t.json").chars == tok.chars
    small = data.CharTokenizer.from_text("banana")
    assert small.chars == "abn" and small.encode("nab") == [2, 0, 1]


def test_char_tokenizer_errors_name_the_problem():
    tok = data.CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"\['z'\].*position 1"):
        tok.encode("az")
    with pytest.raises(ValueError, match=r"\[7\]"):
        tok.decode([0, 7])


def test_hf_tokenizer_json(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    model = tokenizers.models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]")
    hf = tokenizers.Tokenizer(model)
    hf.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = data.load_tokenizer(tmp_path)
    assert isinstance(tok, data.HFTokenizer) and tok.vocab_size == 3
    assert tok.encode("hello world") == [1, 2]


def test_corpus_is_deterministic_and_printable():
    a = data.pretraining_corpus(200, seed=3)
    assert a == data.pretraining_corpus(200, seed=3) != data.pretraining_corpus(200, seed=4)
    assert a.count("\n") == 200 and set(a) <= set(data.PRINTABLE)


@pytest.mark.parametrize("make", [lambda seed: data.e2e_task(seed=seed), lambda seed: data.list_task("sort", seed=seed),
                                  lambda seed: data.list_task("reverse", seed=seed, n_train=50, n_validation=10, n_test=10)])
def test_tasks_are_deterministic_with_disjoint_splits(make):
    splits = make(0)
    assert splits == make(0) and splits != make(1)
    prompts = [{e.prompt for e in part} for part in (splits.train, splits.validation, splits.test)]
    assert sum(map(len, prompts)) == len(set.union(*prompts))  # no input twice, in or across splits
    for example in splits.train[:50]:
        assert example.prompt.endswith(data.SEPARATOR) and example.references
        assert len(example.prompt) + max(map(len, example.references)) + 1 <= 65  # fits the classroom block


def test_e2e_references_mention_every_attribute():
    words = {"river": ("river",), "centre": ("centre",), "mid": ("priced",), "high": ("pricey", "expensive"),
             "yes": ("famil",), "no": ("adult",)}
    for example in data.e2e_task().test:
        fields = example.prompt[:-1].split("|")
        name, values = fields[0], [f[f.index("[") + 1:-1] for f in fields[1:]]
        for reference in example.references:
            assert name in reference
            for value in values:
                assert any(w in reference for w in words.get(value, (value,))), (example, reference)


def test_list_task_answers():
    example = data.list_task("sort").train[0]
    digits = example.prompt[len("sort "):-1].split()
    assert example.references == (" ".join(sorted(digits)),)
    with pytest.raises(ValueError, match="operation"):
        data.list_task("shuffle")


def test_metrics():
    refs = [("the cat sat on the mat .", "a cat was on the mat ."), ("dogs bark at night in town",)]
    perfect = ["a cat was on the mat .", "dogs bark at night in town"]
    assert data.exact_match(perfect, refs) == 100.0
    assert data.corpus_bleu(perfect, refs) == pytest.approx(100.0)
    garbage = ["zebra quantum", "purple seventeen"]
    assert data.exact_match(garbage, refs) == 0.0
    assert data.corpus_bleu(garbage, refs) < 5
    assert data.exact_match([" dogs bark at night in town "], ["dogs bark at night in town"]) == 100.0
    with pytest.raises(ValueError, match="2 predictions but 1"):
        data.exact_match(perfect, refs[:1])


def test_random_windows_shift_by_one():
    tokens = np.arange(100)
    idx, targets = data.random_windows(tokens, 3, 8, np.random.default_rng(0))
    assert idx.shape == targets.shape == (3, 8) and idx.dtype == np.int64
    np.testing.assert_array_equal(targets, idx + 1)
    with pytest.raises(ValueError, match="block_size"):
        data.random_windows(tokens[:5], 1, 8, np.random.default_rng(0))


def test_encode_examples_masks_prompt_and_padding():
    tok = data.CharTokenizer.printable()
    examples = [data.Example("ab=", ("xy",)), data.Example("c=", ("z", "zz"))]
    idx, targets = data.encode_examples(examples, tok, block_size=8)
    assert idx.shape == (3, 5)  # rows: "ab=xy\n" (6 tokens) sets T = 5
    assert tok.decode(idx[0]) == "ab=xy"
    assert tok.decode(t for t in targets[0] if t != -100) == "xy\n"  # only the answer and its end mark count
    assert list(targets[0][:2]) == [-100, -100]  # "a" -> "b" and "b" -> "=" are prompt
    assert tok.decode(t for t in targets[1] if t != -100) == "z\n"
    assert list(targets[1][3:]) == [-100, -100]  # padding
    batch_idx, batch_targets = data.random_rows(idx, targets, 5, np.random.default_rng(0))
    assert batch_idx.shape == batch_targets.shape == (5, 5)
    with pytest.raises(ValueError, match="max_len=5"):
        data.encode_examples(examples, tok, block_size=4)
