"""Tokenizers: text <-> lists of integer ids.

``CharTokenizer`` gives every character its own id. ``CharTokenizer.printable()``
is the fixed 96-symbol vocabulary of the classroom model (newline plus the 95
printable ASCII characters), so every model trained here shares one vocabulary.
``HFTokenizer`` wraps a Hugging Face ``tokenizer.json`` (needs the ``tokenizers``
package) behind the same encode/decode interface.
"""
import os

from ..io import load_json, save_json

PRINTABLE = "\n" + "".join(chr(c) for c in range(32, 127))  # 96 symbols; "\n" ends a text
CHAR_TOKENIZER_FILE = "char_tokenizer.json"
_CHAR_FORMAT = "minilora.CharTokenizer"


class CharTokenizer:
    """One id per character: ``chars[i]`` has id i.  encode("hi") -> [id('h'), id('i')]."""

    def __init__(self, chars):
        chars = "".join(chars)
        if len(set(chars)) != len(chars):
            raise ValueError(f"CharTokenizer: the vocabulary repeats characters: {chars!r}")
        self.chars = chars
        self._ids = {c: i for i, c in enumerate(chars)}

    @classmethod
    def printable(cls):
        """The fixed 96-character vocabulary: newline, then ASCII 32..126 (space to '~')."""
        return cls(PRINTABLE)

    @classmethod
    def from_text(cls, text):
        """A vocabulary of exactly the characters that occur in ``text``, sorted."""
        return cls(sorted(set(text)))

    @property
    def vocab_size(self):
        return len(self.chars)

    @property
    def eos_id(self):
        """The id of "\\n", which ends every example (None if the vocabulary lacks it)."""
        return self._ids.get("\n")

    def encode(self, text):
        try:
            return [self._ids[c] for c in text]
        except KeyError:
            bad = sorted({c for c in text if c not in self._ids})
            raise ValueError(
                f"CharTokenizer: characters {bad} are not in the {self.vocab_size}-character vocabulary "
                f"(first at position {next(i for i, c in enumerate(text) if c in bad)} of the text). "
                "Fix: remove them, or build the tokenizer with CharTokenizer.from_text(all_your_text)."
            ) from None

    def decode(self, ids):
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"CharTokenizer: ids {bad[:10]} are outside [0, {self.vocab_size}). Fix: check the model's vocab_size.")
        return "".join(self.chars[i] for i in ids)

    def save(self, path):
        """Write the vocabulary as JSON (atomically); ``CharTokenizer.load(path)`` reads it back."""
        save_json(path, {"type": _CHAR_FORMAT, "chars": self.chars})

    @classmethod
    def load(cls, path):
        data = load_json(path)
        if data.get("type") != _CHAR_FORMAT:
            raise ValueError(f"{path} is not a CharTokenizer file (type={data.get('type')!r}, expected {_CHAR_FORMAT!r})")
        return cls(data["chars"])

    def __repr__(self):
        return f"CharTokenizer(vocab_size={self.vocab_size})"


class HFTokenizer:
    """A Hugging Face ``tokenizer.json`` with encode/decode/vocab_size, like CharTokenizer's."""

    def __init__(self, path):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ImportError(
                "reading a Hugging Face tokenizer.json needs the 'tokenizers' package. "
                "Fix: pip install tokenizers (or pip install 'minilora[train]')."
            ) from None
        self.path = os.fspath(path)
        self._tokenizer = Tokenizer.from_file(self.path)
        self._tokenizer.no_padding()  # some files pad every text to a fixed length; training code pads itself
        self._tokenizer.no_truncation()

    @property
    def vocab_size(self):
        return self._tokenizer.get_vocab_size()

    @property
    def eos_id(self):
        return None

    def encode(self, text):
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids):
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def __repr__(self):
        return f"HFTokenizer({self.path!r}, vocab_size={self.vocab_size})"


def load_tokenizer(path):
    """Load a CharTokenizer file, a Hugging Face tokenizer.json, or whichever of the two a folder holds."""
    path = os.fspath(path)
    if os.path.isdir(path):
        for name in (CHAR_TOKENIZER_FILE, "tokenizer.json"):
            if os.path.exists(os.path.join(path, name)):
                return load_tokenizer(os.path.join(path, name))
        raise FileNotFoundError(f"{path} holds neither {CHAR_TOKENIZER_FILE} nor tokenizer.json. Fix: save the tokenizer beside the model.")
    if load_json(path).get("type") == _CHAR_FORMAT:
        return CharTokenizer.load(path)
    return HFTokenizer(path)
