"""The tokenizer and chat template stored in a GGUF file's metadata. Needs the ``llm`` extra (gguf, tokenizers, jinja2).

    tok = LlamaTokenizer.from_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    ids = tok.encode(prompt)  # special tokens like <|im_start|> stay whole

A "gpt2" tokenizer in llama.cpp's metadata is byte-level BPE: every byte of the
UTF-8 text is first written as one printable character (GPT-2's byte alphabet,
so a space is "Ġ"), then the merges join characters into tokens, in rank order.
The metadata gives the tokens (their index is the id), the merges ("a b", best
first) and a type per token (3: control, like <|im_end|>; 4: user-defined); the
control and user-defined tokens are matched whole before BPE sees the text.
"""
from .llama_gguf import metadata, open_gguf

CONTROL, USER_DEFINED = 3, 4  # llama.cpp's token types


def _byte_alphabet():
    """GPT-2's map from each byte to a printable character (tokenizers' ByteLevel alphabet)."""
    from tokenizers import pre_tokenizers
    return set(pre_tokenizers.ByteLevel.alphabet())


class LlamaTokenizer:
    """A tokenizers.Tokenizer (byte-level BPE) plus the model's chat template and special tokens."""

    def __init__(self, tokenizer, chat_template=None, bos_token=None, eos_token=None):
        self.tokenizer, self.chat_template = tokenizer, chat_template
        self.bos_token, self.eos_token = bos_token, eos_token
        self.eos_token_id = None if eos_token is None else tokenizer.token_to_id(eos_token)

    @classmethod
    def from_gguf(cls, path):
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

        reader = open_gguf(path)
        meta = metadata(reader)
        kind = meta.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise ValueError(
                f"{path}: tokenizer.ggml.model is {kind!r}; minilora reads byte-level BPE tokenizers ('gpt2') only. "
                "Fix: use transformers' AutoTokenizer.from_pretrained(folder, gguf_file=...) for this file."
            )
        tokens = reader.fields["tokenizer.ggml.tokens"].contents()
        types = reader.fields["tokenizer.ggml.token_type"].contents()
        merges = [tuple(m.split(" ")) for m in reader.fields["tokenizer.ggml.merges"].contents()]
        alphabet = _byte_alphabet()
        if not all(set(t) <= alphabet for t, kind in zip(tokens, types) if kind not in (CONTROL, USER_DEFINED)):
            raise ValueError(f"{path}: a normal token is not written in the byte-level alphabet; the file's tokenizer is not GPT-2 style.")
        bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False)
        tokenizer = Tokenizer(bpe)
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=bool(meta.get("tokenizer.ggml.add_space_prefix", False)))
        tokenizer.decoder = decoders.ByteLevel()
        # Control tokens (<|im_start|>, ...) are special: matched whole, left out by decode(skip_special_tokens=True).
        tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                      for t, kind in zip(tokens, types) if kind == CONTROL and set(t) <= alphabet])
        tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t, kind in zip(tokens, types) if kind == USER_DEFINED])

        def token(key):
            i = meta.get(f"tokenizer.ggml.{key}")
            return None if i is None else tokens[i]
        return cls(tokenizer, meta.get("tokenizer.chat_template"), token("bos_token_id"), token("eos_token_id"))

    def encode(self, text):
        """text -> list of token ids (no BOS is added: the chat template writes what the model needs)."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens=False):
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages, add_generation_prompt=False):
        """Render ``messages`` ([{"role": ..., "content": ...}]) with the file's Jinja template, as transformers does."""
        if self.chat_template is None:
            raise ValueError("apply_chat_template: this GGUF file has no tokenizer.chat_template. Fix: format the prompt yourself.")
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)  # transformers' settings
        template = env.from_string(self.chat_template)
        return template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                               bos_token=self.bos_token or "", eos_token=self.eos_token or "")

    def __len__(self):
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def __repr__(self):
        return f"LlamaTokenizer(vocab={len(self)}, bos={self.bos_token!r}, eos={self.eos_token!r}, chat_template={self.chat_template is not None})"
