"""Character-level text from Python's own standard library sources (they ship with every interpreter).

A fixed list of stable, pure-Python stdlib modules is read in order (those missing are skipped), the
characters outside printable ASCII are mapped to ``?``, and the text is cut into non-overlapping windows
of ``seq_len + 1`` characters: input = the first ``seq_len``, target = the next character at each position.
The first 90 % of the windows train, the rest test.
"""

from __future__ import annotations

import functools
import sysconfig
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from host.data import DataSplits

__all__ = ["load_text", "SOURCES", "VOCAB"]

SOURCES = ("textwrap.py", "string.py", "bisect.py", "heapq.py", "fnmatch.py", "shlex.py", "colorsys.py",
           "keyword.py", "stat.py", "glob.py")
VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))     # newline + printable ASCII (96 symbols)


@functools.lru_cache(maxsize=4)
def _corpus(max_chars: int) -> str:
    root = Path(sysconfig.get_paths()["stdlib"])
    parts = []
    for name in SOURCES:
        p = root / name
        if p.is_file():
            parts.append(p.read_text(encoding="utf-8", errors="replace"))
    text = "\n".join(parts)
    if not text:
        raise FileNotFoundError(f"no standard-library sources found under {root}")
    return "".join(c if c in VOCAB else "?" for c in text.replace("\t", "    "))[:max_chars]


def load_text(seq_len: int = 64, max_chars: int = 200_000) -> DataSplits:
    """Next-character prediction windows; ``num_classes`` is the vocabulary size (96)."""
    text = _corpus(max_chars)
    lut = {c: i for i, c in enumerate(VOCAB)}
    ids = torch.tensor([lut[c] for c in text], dtype=torch.int64)
    n = (len(ids) - 1) // (seq_len + 1)
    win = ids[: n * (seq_len + 1)].reshape(n, seq_len + 1)
    x, y = win[:, :-1].contiguous(), win[:, 1:].contiguous()
    n_train = int(n * 0.9)
    return DataSplits("text", TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[n_train:], y[n_train:]),
                      len(VOCAB), (seq_len,), task="lm",
                      info={"source": f"Python stdlib sources {list(SOURCES)}", "chars": len(text),
                            "seq_len": seq_len})
