"""SFT batches are cut to their longest row (rounded up to data.pad_to_multiple_of) and name their target
positions; the loss on the cut batch (the output projection on the targets only) is the loss on the full
windows: the cut removes only padding."""

import numpy as np
import pytest
import torch

from data.chat.rows import Skipped
from data.chat.sft import Encoded, pack_sft, pad_sft
from data.chat.template import IGNORE
from train.data_loader import SFTSamples, collate_sft, collate_windows
from train.model.config import apply_overrides, load_preset
from train.model.transformer import Transformer
from train.objectives import NextToken

PAD, SEQ = 0, 64


def examples(lengths, seed=0):
    """Conversations of the given lengths: a 3-token prompt (no labels), then labelled tokens."""
    rng = np.random.default_rng(seed)
    out = []
    for n, length in enumerate(lengths):
        ids = rng.integers(1, 100, length).tolist()
        out.append(Encoded(ids, [IGNORE] * 3 + ids[3:], f"example {n}"))
    return out


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transformer(apply_overrides(load_preset("llama3_tiny"), {"vocab_size": 128})).eval()


@pytest.mark.parametrize("packed, multiple_of, lengths, expected", [
    (False, 8, [10, 23, 7], 24),  # longest 23 tokens: 22 inputs -> 24
    (False, 64, [10, 23, 7], 64),
    (False, 1, [10, 23, 7], 22),
    (False, 8, [70, 5], SEQ),  # cut to a full window: never more than seq_len
    (True, 8, [20, 20, 10], 56),  # one window of 50 tokens: 49 inputs -> 56
])
def test_cut_batches_give_the_full_windows_loss(model, packed, multiple_of, lengths, expected):
    windows = (pack_sft if packed else pad_sft)(examples(lengths), SEQ, PAD, Skipped())
    samples = [(item, i) for i, item in enumerate(SFTSamples(windows))]
    full, cut = collate_windows(samples), collate_sft(multiple_of, packed)(samples)
    assert cut["inputs"].shape == cut["targets"].shape == (len(windows), expected)
    assert ("doc_ids" in cut) == packed and cut["count"] == full["count"] == len(cut["target_positions"])
    assert cut["index"] == full["index"] and (cut["targets"].flatten()[cut["target_positions"]] != IGNORE).all()
    objective = NextToken(chunk_tokens=4096)
    with torch.no_grad():
        expected_loss, cut_loss = objective(model, full)[0], objective(model, cut)[0]
    torch.testing.assert_close(cut_loss, expected_loss, rtol=1e-6, atol=1e-5)
