"""A byte-level Hugging Face tokenizer with the ids of :class:`sessa.tokens.ByteTokenizer`.

Ids 0-255 are the UTF-8 bytes, then ``<pad>`` 256, ``<bos>`` 257, ``<eos>`` 258 (vocabulary 259), so a
model trained on the byte-level tasks and this tokenizer agree. Token names are those of
``ByteTokenizer.vocab``: printable ASCII as itself, any other byte as ``<0xNN>``. No vocabulary file is
needed: ``save_pretrained`` writes only the tokenizer config, and ``AutoTokenizer.from_pretrained`` finds
this class once ``sessa.models`` is imported. Padding defaults to the left, as decoder-only generation
needs.

Example:
    >>> tok = SessaByteTokenizer()
    >>> tok("hé")["input_ids"]
    [104, 195, 169]
    >>> tok.decode([104, 195, 169, 258], skip_special_tokens=True)
    'hé'
"""

from __future__ import annotations

from typing import Any

from transformers import AddedToken, PreTrainedTokenizer

from sessa.tokens import ByteTokenizer

_BYTES = ByteTokenizer()
_BYTE_NAMES: list[str] = _BYTES.vocab[:256]
_BYTE_IDS: dict[str, int] = {name: i for i, name in enumerate(_BYTE_NAMES)}
_SPECIALS: dict[str, int] = {"<pad>": _BYTES.pad_id, "<bos>": _BYTES.bos_id, "<eos>": _BYTES.eos_id}
_PATTERNS = {(False, False): "none", (True, False): "bos", (False, True): "eos", (True, True): "bos_eos"}


class SessaByteTokenizer(PreTrainedTokenizer):
    """UTF-8 bytes as tokens (ids as ``ByteTokenizer``); ``<bos>``/``<eos>`` added when asked.

    prepend_bos / append_eos: wrap every encoded text in ``<bos>`` ... ``<eos>`` (both off by
    default: the byte-level LM task feeds raw bytes with ``<eos>`` between documents). Not named
    ``add_bos_token``/``add_eos_token``: Transformers 5 drops those keys when saving a tokenizer.
    Decoding replaces invalid UTF-8 (e.g. a character cut in half) with U+FFFD.
    """

    vocab_files_names: dict[str, str] = {}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        pad_token: str = "<pad>",
        bos_token: str = "<bos>",
        eos_token: str = "<eos>",
        prepend_bos: bool = False,
        append_eos: bool = False,
        padding_side: str = "left",
        **kwargs: Any,
    ) -> None:
        given = {"pad_token": pad_token, "bos_token": bos_token, "eos_token": eos_token}
        for (name, value), expected in zip(given.items(), _SPECIALS, strict=True):
            if str(value) != expected:
                raise ValueError(
                    f"{name} must be {expected!r} (the byte vocabulary's fixed id), got {value!r}"
                )
        for name, value in (("prepend_bos", prepend_bos), ("append_eos", append_eos)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be a bool, got {type(value).__name__} ({value!r})")
        self._added_tokens_decoder = {i: AddedToken(name, special=True) for name, i in _SPECIALS.items()}
        self.prepend_bos, self.append_eos = prepend_bos, append_eos
        kwargs.pop("special_tokens_pattern", None)  # derived from the two flags
        super().__init__(
            pad_token=pad_token,
            bos_token=bos_token,
            eos_token=eos_token,
            prepend_bos=prepend_bos,
            append_eos=append_eos,
            padding_side=padding_side,
            special_tokens_pattern=_PATTERNS[(prepend_bos, append_eos)],
            **kwargs,
        )

    @property
    def vocab_size(self) -> int:
        """Number of byte tokens (256); ``len(tokenizer)`` counts the special tokens too (259)."""
        return 256

    def get_vocab(self) -> dict[str, int]:
        return {**_BYTE_IDS, **_SPECIALS}

    def _tokenize(self, text: str, **kwargs: Any) -> list[str]:
        return [_BYTE_NAMES[b] for b in text.encode("utf-8")]

    def _convert_token_to_id(self, token: str) -> int | None:
        return _BYTE_IDS.get(token, _SPECIALS.get(token))

    def _convert_id_to_token(self, index: int) -> str:
        if not 0 <= index < 256:
            raise ValueError(f"token id must be in [0, {_BYTES.vocab_size}), got {index}")
        return _BYTE_NAMES[index]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Bytes of the byte tokens decoded as UTF-8; special tokens appear as their names."""
        out, pending = [], bytearray()
        for token in tokens:
            if token in _BYTE_IDS:
                pending.append(_BYTE_IDS[token])
                continue
            out.append(pending.decode("utf-8", errors="replace"))
            pending = bytearray()
            out.append(token)
        out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        return ()  # the vocabulary is fixed: nothing to write
