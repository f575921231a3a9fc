"""Synthetic passkey documents (Mohtashami & Jaggi 2023, arXiv 2305.16300): a 5-digit key hidden at some
depth in repeated filler text, the question, and its answer.

`source.kind=passkey` makes training documents of them: the synthetic retrieval share that long-context
recipes mix into mid-training. `train.passkey` builds its probe's prompts from the same pieces, without the
answer, with keys from another random stream.
"""

import random
from typing import Iterator

from data.config import SourceConfig
from data.errors import DataError

INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
         "I will quiz you about the important information there.\n")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key.\n"
QUESTION = "What is the pass key? The pass key is"


def passkey_text(before: int, after: int, key: int, answer: bool) -> str:
    """The intro, `before` filler lines, the needle, `after` filler lines, the question (and the answer)."""
    return INTRO + FILLER * before + NEEDLE.format(key=key) + FILLER * after + QUESTION + (f" {key}.\n" if answer else "")


def passkey_documents(source: SourceConfig) -> Iterator[str]:
    """`source.max_documents` documents, each with filler lines drawn from `source.filler_lines` and the
    needle at a uniform depth; the same documents on every run."""
    if source.max_documents is None:
        raise DataError("source.kind=passkey generates documents without end: set max_documents (e.g. 2000)")
    if len(source.filler_lines) != 2 or not 0 <= source.filler_lines[0] <= source.filler_lines[1]:
        raise DataError(f"filler_lines={list(source.filler_lines)}: give [min, max] with 0 <= min <= max")
    rng = random.Random("passkey training documents")  # not train.passkey's stream of probe keys
    while True:
        lines = rng.randint(*source.filler_lines)
        before = rng.randint(0, lines)
        yield passkey_text(before, lines - before, rng.randint(10000, 99999), answer=True)
