"""Multiple-choice accuracy on a local JSONL file, scored the way lm-evaluation-harness scores its
`multiple_choice` tasks: the choice with the highest summed log-likelihood given the context wins (`acc`),
or with the highest sum divided by the choice's length in characters (`acc_norm`).

One row per line: {"query": "...", "choices": ["...", ...], "answer": <index of the right choice>}
("context" may stand for "query"). A choice follows the context after one space (lm-eval's
target_delimiter); context and choice are tokenized together and the continuation is what comes after
the context's own tokens (lm-eval's `_encode_pair`), left-truncated to the model's context. The training
callback (train/callbacks.py, `downstream.path`) scores the live, possibly sharded, model with this on
every rank; `python -m train.evaluate task_files=[<file>.jsonl]` reads the same file as an lm-eval task.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import torch
from tokenizers import Tokenizer

from train.dpo_loss import sequence_logps
from train.loss import IGNORE

DELIMITER = " "  # between the context and a choice, as lm-eval's default target_delimiter


@dataclass(frozen=True)
class Question:
    context: str
    choices: Tuple[str, ...]
    answer: int


def read_questions(path: str | Path) -> List[Question]:
    """The rows of a multiple-choice JSONL file; a bad row is an error naming its line."""
    path, questions = Path(path), []
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such multiple-choice file (JSONL rows with query, choices, answer)")
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not JSON ({error.msg})") from None
        context, choices, answer = row.get("query", row.get("context")), row.get("choices"), row.get("answer")
        if not isinstance(context, str) or not context:
            raise ValueError(f"{path}:{number}: needs a non-empty string 'query' (or 'context')")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise ValueError(f"{path}:{number}: 'choices' must be a list of two or more non-empty strings")
        if not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise ValueError(f"{path}:{number}: 'answer' must be the index of the right choice (0..{len(choices) - 1})")
        questions.append(Question(context, tuple(choices), answer))
    if not questions:
        raise ValueError(f"{path}: no rows")
    return questions


def encode_choice(tokenizer: Tokenizer, context: str, choice: str) -> Tuple[List[int], List[int]]:
    """(context ids, continuation ids) of one choice, as lm-eval's `_encode_pair` for causal models: the
    context's trailing spaces move to the continuation, and the continuation is the ids of context +
    continuation after as many ids as the context alone has."""
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False).ids  # noqa: E731
    continuation = DELIMITER + choice
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    context_ids = encode(context)
    return context_ids, encode(context + continuation)[len(context_ids):]


def pair_batch(pairs: List[Tuple[List[int], List[int]]], max_len: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(inputs [B, T], targets [B, T]) for (context, continuation) pairs, right-padded: the last max_len + 1
    ids of each, shifted by one, with only the continuation's positions as targets (IGNORE elsewhere)."""
    rows = [(context + continuation)[-(max_len + 1):] for context, continuation in pairs]
    T = max(len(row) for row in rows) - 1
    inputs_BT = torch.zeros(len(rows), T, dtype=torch.long)
    targets_BT = torch.full((len(rows), T), IGNORE, dtype=torch.long)
    for i, (row, (_, continuation)) in enumerate(zip(rows, pairs)):
        n = len(row) - 1
        inputs_BT[i, :n] = torch.tensor(row[:-1])
        targets_BT[i, n - len(continuation):n] = torch.tensor(row[-len(continuation):])
    return inputs_BT, targets_BT


@torch.no_grad()
def score_share(model, tokenizer: Tokenizer, questions: List[Question], rank: int = 0, ranks: int = 1,
                batch_size: int = 16, chunk_tokens: int = 4096) -> torch.Tensor:
    """[3] float64 sums over this rank's share of the questions (every ranks-th, from its own index): right
    by acc, right by acc_norm, questions. Sum them over the ranks and pass them to `accuracies`. Every rank
    runs the same number of forwards (a sharded model gathers its weights collectively): one with fewer
    choices to score repeats a batch and leaves it out."""
    device, max_len = model.output_weight().device, model.config.max_seq_len
    encoded = [[encode_choice(tokenizer, q.context, c) for c in q.choices] for q in questions]
    pairs = [pair for row in encoded[rank::ranks] for pair in row]
    forwards = max(-(-sum(len(row) for row in encoded[r::ranks]) // batch_size) for r in range(ranks))
    was_training = model.training
    model.eval()
    logps = []  # [B] per batch, on the device: one copy to the host at the end
    for start in range(0, forwards * batch_size, batch_size):
        chunk = pairs[start : start + batch_size]
        inputs_BT, targets_BT = pair_batch(chunk or encoded[0], max_len)
        hidden_BTD = model.hidden_states(inputs_BT.to(device))
        logps_B = sequence_logps(hidden_BTD, model.output_weight(), targets_BT.to(device), chunk_tokens,
                                 model.config.final_softcap)
        logps += [logps_B] if chunk else []
    model.train(was_training)
    lls_N = torch.cat(logps).double().cpu() if logps else torch.zeros(0, dtype=torch.float64)
    sums, position = torch.zeros(3, dtype=torch.float64), 0
    for question in questions[rank::ranks]:
        lls = lls_N[position : position + len(question.choices)]
        lengths = torch.tensor([len(c) for c in question.choices], dtype=torch.float64)
        position += len(question.choices)
        sums += torch.tensor([lls.argmax() == question.answer, (lls / lengths).argmax() == question.answer, 1.0])
    return sums


def accuracies(sums: torch.Tensor) -> Dict[str, float]:
    right, right_norm, total = sums.tolist()
    return {"acc": right / total, "acc_norm": right_norm / total}
