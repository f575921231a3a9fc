"""Tokenizing many conversations (or pairs) in worker processes, in order.

`encode_many(chat, encode, items, workers)` returns [encode(chat, item)] for every item, or the BadRow reason
(a str) where the item was refused. Sets of fewer than PARALLEL_FROM items, or workers <= 1, run in this
process; larger ones in `workers` spawned processes (spawn, not fork: the parent's tokenizer may already run
Rust threads; each worker receives the ChatFormat once), in chunks, so a 1M-conversation mix tokenizes at
the speed of the cores.
"""

import multiprocessing
import os
from typing import Callable, List, Sequence, Tuple, TypeVar, Union

from data.chat.chat_format import ChatFormat
from data.chat.rows import BadRow

# items; below this, starting the workers (seconds each: imports, the tokenizer) costs more than it saves. The
# embedded set (~2,500 conversations, ~3 s in one process) stays in-process.
PARALLEL_FROM = 5000
CHUNK = 256
T, R = TypeVar("T"), TypeVar("R")

_chat: ChatFormat = None
_encode: Callable = None


def default_workers() -> int:
    """One worker per core, at most 16."""
    return min(os.cpu_count() or 1, 16)


def init_worker(chat: ChatFormat, encode: Callable) -> None:
    global _chat, _encode
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism
    _chat, _encode = chat, encode


def encode_one(chat: ChatFormat, encode: Callable[[ChatFormat, T], R], item: T) -> Union[R, str]:
    try:
        return encode(chat, item)
    except BadRow as reason:
        return str(reason)


def encode_chunk(chunk: Sequence) -> List:
    return [encode_one(_chat, _encode, item) for item in chunk]


def encode_many(chat: ChatFormat, encode: Callable[[ChatFormat, T], R], items: Sequence[T], workers: int
                ) -> List[Union[R, str]]:
    """encode(chat, item) of every item, in order; a BadRow becomes its reason (a str). `encode` must be a
    module-level function (it is sent to the workers)."""
    if workers <= 1 or len(items) < PARALLEL_FROM:
        return [encode_one(chat, encode, item) for item in items]
    chunks: List[Tuple] = [tuple(items[i : i + CHUNK]) for i in range(0, len(items), CHUNK)]
    context = multiprocessing.get_context("spawn")
    with context.Pool(min(workers, len(chunks)), initializer=init_worker, initargs=(chat, encode)) as pool:
        return [result for chunk in pool.imap(encode_chunk, chunks) for result in chunk]
