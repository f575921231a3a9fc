"""Packed DPO batches (data.pack=true) hold the same pairs as padded ones, only laid out differently: each
sequence's log-prob, the step's loss, statistics and gradients are the padded layout's (which
tests/train/test_dpo_loss.py checks against TRL), and the reference's log-probs precomputed on packed
batches are the live reference's. Packing without document masking is refused."""

import numpy as np
import pytest
import torch
import torch.distributed as dist

from data.chat.preferences import EncodedPair
from data.chat.template import IGNORE
from train.config import DPOConfig, TrainConfig
from train.data_loader import collate_preferences
from train.model.config import apply_overrides, load_preset
from train.model.transformer import Transformer
from train.objectives import DirectPreference, response_logps
from train.parallel.world import World
from train.reference import compute
from train.stages import stage_of

PAD, SEQ, MULTIPLE = 0, 64, 16
# (prompt, chosen reply, rejected reply) lengths; one rejected sequence is exactly SEQ tokens
LENGTHS = [(5, 9, 30), (20, 44, 3), (2, 60, 62), (11, 4, 7), (30, 12, 25), (8, 23, 16)]


def pairs(lengths=LENGTHS, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for n, (prompt, chosen, rejected) in enumerate(lengths):
        ids = rng.integers(1, 100, prompt).tolist()
        sides = []
        for reply in (chosen, rejected):
            reply_ids = rng.integers(1, 100, reply).tolist()
            sides += [ids + reply_ids, [IGNORE] * prompt + reply_ids]
        out.append(EncodedPair(*sides, f"pair {n}"))
    return out


def model(seed):
    torch.manual_seed(seed)
    return Transformer(apply_overrides(load_preset("llama3_tiny"), {"vocab_size": 128}))


def collate(packed):
    return collate_preferences(PAD, MULTIPLE, SEQ, packed)


def test_packed_rows_hold_every_sequence_whole_and_no_more_than_seq_len():
    encoded = pairs()
    assert max(len(ids) for p in encoded for ids in (p.chosen_ids, p.rejected_ids)) == SEQ
    batch = collate(True)([(p, i) for i, p in enumerate(encoded)])
    padded = collate(False)([(p, i) for i, p in enumerate(encoded)])
    R, W = batch["inputs"].shape
    assert W == SEQ and R < len(padded["inputs"]) and batch["doc_ids"].shape == batch["targets"].shape == (R, W)
    assert (batch["inputs"] != PAD).sum() == sum(len(ids) - 1 for p in encoded for ids in (p.chosen_ids, p.rejected_ids))
    # each sequence's targets, found through target_sequences, are its padded row's targets in order
    flat_targets = batch["targets"].flatten()[batch["target_positions"]]
    for s, row in enumerate(padded["targets"]):
        assert flat_targets[batch["target_sequences"] == s].tolist() == row[row != IGNORE].tolist(), s
    # the tokens of one document are consecutive: doc ids never go down along a row
    assert (batch["doc_ids"].diff(dim=1) >= 0).all()


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "simpo"])
def test_packed_step_equals_the_padded_one(loss_type):
    """Log-probs of each sequence, the loss, the statistics and the policy's gradients (fp32, tiny Llama)."""
    policy, objective = model(0), DirectPreference(DPOConfig(loss_type=loss_type), model(1).eval(), 4096)
    samples = [(p, i) for i, p in enumerate(pairs())]
    results = {}
    for packed in (False, True):
        batch = collate(packed)(samples)
        policy.zero_grad()
        loss, _, stats = objective(policy, batch)
        loss.backward()
        with torch.no_grad():
            logps_2B = response_logps(policy, batch, chunk_tokens=7)  # chunks cut across sequences and rows
        results[packed] = logps_2B, loss.detach(), stats, {n: p.grad.clone() for n, p in policy.named_parameters()}
    (padded_logps, padded_loss, padded_stats, padded_grads), (logps, loss, stats, grads) = results[False], results[True]
    assert logps.shape == (2 * len(LENGTHS),)
    torch.testing.assert_close(logps, padded_logps, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(loss, padded_loss, rtol=1e-5, atol=1e-5)
    for key in padded_stats:
        torch.testing.assert_close(stats[key], padded_stats[key], rtol=1e-5, atol=1e-5, msg=key)
    for name in padded_grads:
        torch.testing.assert_close(grads[name], padded_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_reference_precomputed_on_packed_batches_equals_the_live_one(tmp_path):
    """train/reference.py's compute (longest pairs first, 4 micro-batches a forward: other row mates) against
    the live reference on the training batches, both packed, and against the padded layout."""
    encoded = pairs(LENGTHS * 3, seed=1)
    reference = model(1).eval()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    try:
        precomputed_N2 = compute(reference, encoded, collate(True), micro_batch=2, chunk_tokens=4096,
                                 world=World(0, 0, 1, torch.device("cpu")), ranks=1)
    finally:
        dist.destroy_process_group()
    objective = DirectPreference(DPOConfig(), reference, 4096)
    for packed in (True, False):
        live = []
        for start in range(0, len(encoded), 4):  # training micro-batches of 4 pairs, in their order
            logps_2B = objective.reference_logps(collate(packed)([(p, i) for i, p in enumerate(encoded[start : start + 4])]))
            live.append(torch.stack(logps_2B.chunk(2), dim=1))
        torch.testing.assert_close(precomputed_N2, torch.cat(live), rtol=1e-5, atol=1e-4)


def test_packed_pairs_without_document_masking_are_refused(tmp_path):
    config = TrainConfig(stage="dpo")
    config.init.weights, config.data.document_masking = str(tmp_path), False
    with pytest.raises(ValueError, match="set data.document_masking=true or data.pack=false"):
        stage_of(config)
