"""Token conventions shared by the tasks and the models: the ignored-target id and the byte vocabulary.

A leaf module (it imports nothing from the package), so ``sessa.models`` and ``sessa.tasks`` agree on
these numbers without importing each other.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

IGNORE_INDEX = -100  # target id of positions that are not scored (PyTorch's cross_entropy default)


class ByteTokenizer:
    """UTF-8 bytes as tokens: ids 0-255 are the byte values, then ``<pad>`` 256, ``<bos>`` 257, ``<eos>`` 258.

    vocab_size = 259. ``decode`` drops special ids and replaces invalid UTF-8 with U+FFFD.

    Example:
        >>> tok = ByteTokenizer()
        >>> tok.encode("hé")
        [104, 195, 169]
        >>> tok.decode([104, 195, 169, 258])
        'hé'
    """

    pad_id = 256
    bos_id = 257
    eos_id = 258
    vocab_size = 259

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Byte ids of ``text`` (UTF-8), optionally wrapped in ``<bos>`` / ``<eos>``."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        ids = list(text.encode("utf-8"))
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids: Iterable[int] | Any) -> str:
        """Text of the byte ids in ``ids`` (a sequence or a tensor; special ids skipped, invalid UTF-8
        replaced)."""
        values = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        bad = [i for i in values if not 0 <= int(i) < self.vocab_size]
        if bad:
            raise ValueError(f"ids must be in [0, {self.vocab_size}), got {bad[:5]}")
        return bytes(int(i) for i in values if int(i) < 256).decode("utf-8", errors="replace")

    @property
    def vocab(self) -> list[str]:
        """Token names: printable ASCII as itself, other bytes as ``<0xNN>``, then the specials."""
        names = [chr(b) if 32 <= b < 127 else f"<0x{b:02X}>" for b in range(256)]
        return names + ["<pad>", "<bos>", "<eos>"]
