"""Data: tokenizers, the synthetic corpus and tasks, batching, and text metrics.

    from minilora import data
    tok = data.CharTokenizer.printable()                 # 96 symbols
    splits = data.e2e_task(seed=0)                        # Example(prompt, references)
    idx, targets = data.encode_examples(splits.train, tok, block_size=64)
    data.corpus_bleu(predictions, [e.references for e in splits.test])
"""
from .batching import IGNORE_INDEX, encode_examples, random_rows, random_windows
from .corpus import pretraining_corpus
from .metrics import corpus_bleu, exact_match
from .tasks import SEPARATOR, Example, Splits, e2e_task, list_task, meaning_representation
from .tokenizers import CHAR_TOKENIZER_FILE, PRINTABLE, CharTokenizer, HFTokenizer, load_tokenizer

__all__ = [
    "CharTokenizer", "HFTokenizer", "load_tokenizer", "PRINTABLE", "CHAR_TOKENIZER_FILE", "pretraining_corpus",
    "Example", "Splits", "e2e_task", "list_task", "meaning_representation", "SEPARATOR",
    "random_windows", "encode_examples", "random_rows", "IGNORE_INDEX", "exact_match", "corpus_bleu",
]
