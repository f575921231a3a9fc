"""Packed windows: with doc_ids, each document's logits equal running that document alone
(attention stays inside the document and positions restart at its first token)."""

import pytest
import torch

from train.model import build_model
from train.model.documents import Documents

CASES = {
    "llama3_rope": ("llama3_tiny", {}),
    "qwen3_sliding_sinks": ("qwen3_tiny", {"mixers.full.attention.window": 3, "mixers.full.attention.sinks": True}),
    "gpt2_learned": ("gpt2_tiny", {}),
    "sinusoidal": ("gpt2_tiny", {"position.kind": "sinusoidal"}),
}


@pytest.mark.parametrize("name", CASES)
def test_packed_documents_equal_separate_runs(name):
    preset, overrides = CASES[name]
    torch.manual_seed(0)
    model = build_model(preset, init_std=0.1, **overrides).eval()
    lengths = [[5, 1, 7, 3], [16]]
    ids_BT = torch.randint(0, 8192, (2, 16))
    doc_ids_BT = torch.stack([torch.repeat_interleave(torch.arange(len(ls)), torch.tensor(ls)) for ls in lengths])
    with torch.no_grad():
        packed_BTV = model(ids_BT, doc_ids_BT=doc_ids_BT)
        for b, row_lengths in enumerate(lengths):
            start = 0
            for length in row_lengths:
                alone_TV = model(ids_BT[b : b + 1, start : start + length])[0]
                torch.testing.assert_close(packed_BTV[b, start : start + length], alone_TV, atol=1e-5, rtol=1e-5)
                start += length
        assert not torch.allclose(packed_BTV[0], model(ids_BT[:1])[0], atol=1e-3)  # documents matter


def test_document_positions_and_resets_restart_at_each_document():
    documents = Documents(torch.tensor([[0, 0, 0, 1, 1, 2, 3, 3]]))
    assert documents.positions_BT.tolist() == [[0, 1, 2, 0, 1, 0, 0, 1]]
    assert documents.resets_BT.tolist() == [[False, False, False, True, False, True, True, False]]


def test_a_mask_is_built_once_per_forward_and_window():
    documents = Documents(torch.tensor([[0, 0, 1, 1, 1]]))
    mask = documents.dense_mask(window=2)
    assert documents.dense_mask(window=2) is mask and documents.dense_mask() is not mask
    naive = [[k <= q and q - k < 2 and (k >= 2) == (q >= 2) for k in range(5)] for q in range(5)]
    assert mask[0, 0].tolist() == naive
