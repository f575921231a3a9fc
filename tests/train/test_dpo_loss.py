"""DPO losses and rewards against TRL 1.16's DPOTrainer, SimPO's against its CPOTrainer, ORPO's against its
ORPOTrainer; sequence log-probs against TRL's selective_log_softmax."""

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from train.dpo_loss import dpo_loss, reward_metrics, sequence_logps
from train.loss import IGNORE

trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")
trl_utils = pytest.importorskip("trl.trainer.utils")


def trl_loss(loss_type, beta, label_smoothing, logps, ref_logps, tokens):
    """TRL's DPOTrainer._compute_loss on given log-probs, with no model and no trainer construction.

    The method reads per-token log-probs from `model(...).log_probs` [2B, T-1] and sums them over the completion;
    a stand-in model returns per-token values whose completion sums are `logps` ([chosen; rejected], [2B]), and
    the reference comes precomputed. Returns (mean loss, TRL's logged metrics).
    """
    pairs, length = len(logps) // 2, int(tokens.max()) + 2
    completion_mask = torch.zeros(2 * pairs, length, dtype=torch.long)
    for row, count in enumerate(tokens.tolist()):
        completion_mask[row, 2 : 2 + count] = 1  # two prompt tokens, then `count` completion tokens
    per_token = torch.zeros(2 * pairs, length - 1, dtype=torch.float64)
    for row, count in enumerate(tokens.tolist()):
        per_token[row, 1 : 1 + count] = logps[row] / count  # shifted: position t predicts token t + 1
    model = SimpleNamespace(training=True)
    outputs = SimpleNamespace(log_probs=per_token, entropy=torch.zeros_like(per_token),
                              mean_logits=torch.zeros_like(per_token), is_top1=torch.zeros_like(per_token, dtype=torch.bool))
    fake_trainer = SimpleNamespace(
        model=model, aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=label_smoothing, use_weighting=False,
        accelerator=SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x),
        _metrics={"train": defaultdict(list)}, _total_train_tokens=0, _tp_size=1,
    )
    inputs = {"input_ids": torch.ones_like(completion_mask), "attention_mask": torch.ones_like(completion_mask),
              "completion_mask": completion_mask, "ref_chosen_logps": ref_logps[:pairs], "ref_rejected_logps": ref_logps[pairs:]}
    loss = trl_dpo.DPOTrainer._compute_loss(fake_trainer, lambda **kwargs: outputs, inputs, return_outputs=False)
    return loss, fake_trainer._metrics["train"]


def random_pairs(pairs=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    logps = -torch.rand(2 * pairs, generator=g, dtype=torch.float64) * 40  # [chosen; rejected]
    ref_logps = logps + torch.randn(2 * pairs, generator=g, dtype=torch.float64) * 3
    tokens = torch.randint(1, 12, (2 * pairs,), generator=g)
    return logps, ref_logps, tokens


def ours(loss_type, beta, label_smoothing, logps, ref_logps, tokens):
    pairs = len(logps) // 2
    return dpo_loss(logps[:pairs], logps[pairs:], ref_logps[:pairs], ref_logps[pairs:], beta=beta, loss_type=loss_type,
                    label_smoothing=label_smoothing, chosen_tokens_B=tokens[:pairs], rejected_tokens_B=tokens[pairs:])


@pytest.mark.parametrize("loss_type, beta", [("sigmoid", 0.1), ("sigmoid", 0.5), ("ipo", 0.1), ("ipo", 1.0)])
def test_per_pair_losses_rewards_and_metrics_equal_trl(loss_type, beta):
    logps, ref_logps, tokens = random_pairs()
    out = ours(loss_type, beta, 0.0, logps, ref_logps, tokens)
    pairs = len(logps) // 2
    for i in range(pairs):  # one pair per TRL call: TRL returns only the batch mean
        index = torch.tensor([i, pairs + i])
        expected, _ = trl_loss(loss_type, beta, 0.0, logps[index], ref_logps[index], tokens[index])
        torch.testing.assert_close(out.losses_B[i], expected, rtol=1e-12, atol=1e-12)
    expected, metrics = trl_loss(loss_type, beta, 0.0, logps, ref_logps, tokens)
    torch.testing.assert_close(out.losses_B.mean(), expected, rtol=1e-12, atol=1e-12)
    mine = reward_metrics(out.chosen_rewards_B, out.rejected_rewards_B)
    assert 0 < mine["accuracy"] < 1  # the random pairs have both outcomes, so the comparison means something
    for key, trl_key in [("accuracy", "rewards/accuracies"), ("margin", "rewards/margins"),
                         ("chosen", "rewards/chosen"), ("rejected", "rewards/rejected")]:
        assert mine[key].item() == pytest.approx(metrics[trl_key][0], abs=1e-12)


@pytest.mark.parametrize("label_smoothing", [0.1, 0.3])
def test_conservative_dpo_equals_trl(label_smoothing):
    # TRL 1.16's "sigmoid" ignores label_smoothing; its cDPO formula is in "aot", which sorts the batch's
    # log-ratios before pairing them. For a single pair the sort is the identity, so "aot" is cDPO there.
    logps, ref_logps, tokens = random_pairs(seed=1)
    out = ours("sigmoid", 0.2, label_smoothing, logps, ref_logps, tokens)
    pairs = len(logps) // 2
    for i in range(pairs):
        index = torch.tensor([i, pairs + i])
        expected, _ = trl_loss("aot", 0.2, label_smoothing, logps[index], ref_logps[index], tokens[index])
        torch.testing.assert_close(out.losses_B[i], expected, rtol=1e-12, atol=1e-12)
    plain = ours("sigmoid", 0.2, 0.0, logps, ref_logps, tokens)
    assert not torch.allclose(out.losses_B, plain.losses_B)  # smoothing changed something


def test_bad_options_are_named():
    logps, ref_logps, tokens = random_pairs(pairs=2)
    with pytest.raises(ValueError, match="chosen_tokens_B"):
        dpo_loss(logps[:2], logps[2:], ref_logps[:2], ref_logps[2:], loss_type="ipo")
    with pytest.raises(ValueError, match="unknown"):
        dpo_loss(logps[:2], logps[2:], ref_logps[:2], ref_logps[2:], loss_type="hinge")
    with pytest.raises(ValueError, match="label_smoothing=0.5"):
        dpo_loss(logps[:2], logps[2:], ref_logps[:2], ref_logps[2:], label_smoothing=0.5)


def reference_logps(logits_BTV, targets_BT):
    mask_BT = targets_BT != IGNORE
    per_token_BT = trl_utils.selective_log_softmax(logits_BTV.double(), targets_BT.clamp(min=0))
    return (per_token_BT * mask_BT).sum(-1)


@pytest.mark.parametrize("chunk_tokens", [3, 1024])
def test_sequence_logps_equal_trl_values_and_gradients(chunk_tokens):
    g = torch.Generator().manual_seed(0)
    B, T, D, V = 3, 9, 16, 50
    hidden_BTD = torch.randn(B, T, D, generator=g, requires_grad=True)
    weight_VD = torch.randn(V, D, generator=g, requires_grad=True)
    targets_BT = torch.randint(0, V, (B, T), generator=g)
    targets_BT[0, :4] = IGNORE  # a prompt
    targets_BT[1, 6:] = IGNORE  # padding
    targets_BT[2, :] = IGNORE  # nothing labelled: log-prob 0

    ours_B = sequence_logps(hidden_BTD, weight_VD, targets_BT, chunk_tokens=chunk_tokens)
    assert ours_B.dtype == torch.float32 and ours_B[2] == 0
    ours_B.sum().backward()
    grads = hidden_BTD.grad.clone(), weight_VD.grad.clone()
    hidden_BTD.grad = weight_VD.grad = None
    expected_B = reference_logps(hidden_BTD @ weight_VD.T, targets_BT)
    expected_B.sum().backward()
    torch.testing.assert_close(ours_B.double(), expected_B.detach(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grads[0], hidden_BTD.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[1], weight_VD.grad, rtol=1e-4, atol=1e-5)
    # logits instead of hidden + weight, without grad
    with torch.no_grad():
        logits_BTV = hidden_BTD @ weight_VD.T
        torch.testing.assert_close(sequence_logps(logits_BTV, None, targets_BT, chunk_tokens).double(),
                                   expected_B.detach(), rtol=1e-5, atol=1e-4)


# --- reference-free losses: SimPO (TRL's CPOTrainer, loss_type="simpo") and ORPO (TRL's ORPOTrainer) ---------------


def trl_stub(trainer_class, **fields):
    """A stand-in `self` for TRL's loss methods: the attributes they read, and their own methods bound to it."""
    stub = SimpleNamespace(is_encoder_decoder=False, aux_loss_enabled=False, pad_token_id=0, padding_value=0,
                           accelerator=SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x),
                           concatenated_inputs=trainer_class.concatenated_inputs,
                           get_batch_logps=trainer_class.get_batch_logps, **fields)
    for name in ("concatenated_forward", "get_batch_loss_metrics", "cpo_loss", "odds_ratio_loss"):
        if hasattr(trainer_class, name):
            setattr(stub, name, getattr(trainer_class, name).__get__(stub))
    return stub


def random_sequences(pairs, prompt, seed):
    """TRL's batch (chosen/rejected input ids, attention masks, labels) and [2B, T, V] float64 logits: `prompt`
    unlabelled tokens, then responses of different lengths, then padding."""
    g = torch.Generator().manual_seed(seed)
    T, V = 12, 17
    ids = torch.randint(1, V, (2 * pairs, T), generator=g)
    lengths = torch.randint(prompt + 2, T + 1, (2 * pairs,), generator=g)
    attention = (torch.arange(T)[None] < lengths[:, None]).long()
    labels = torch.where(attention.bool(), ids, IGNORE)
    labels[:, :prompt] = IGNORE
    batch = {f"{side}_{key}": value[part] for side, part in (("chosen", slice(0, pairs)), ("rejected", slice(pairs, None)))
             for key, value in (("input_ids", ids), ("attention_mask", attention), ("labels", labels))}
    return batch, torch.randn(2 * pairs, T, V, generator=g, dtype=torch.float64) * 2


def ours_from_logits(loss_type, beta, logits, batch, **options):
    """Our path: summed response log-probs (sequence_logps, fp32) and token counts -> the mean pair loss."""
    labels = torch.cat([batch["chosen_labels"], batch["rejected_labels"]])
    targets = labels[:, 1:]
    logps = sequence_logps(logits[:, :-1], None, targets).double()
    tokens = (targets != IGNORE).sum(1)
    pairs = len(logps) // 2
    return dpo_loss(logps[:pairs], logps[pairs:], beta=beta, loss_type=loss_type, chosen_tokens_B=tokens[:pairs],
                    rejected_tokens_B=tokens[pairs:], **options)


@pytest.mark.parametrize("beta, gamma, label_smoothing", [(2.0, 0.5, 0.0), (2.5, 1.4, 0.0), (1.0, 0.3, 0.2)])
def test_simpo_equals_trl(beta, gamma, label_smoothing):
    trl_cpo = pytest.importorskip("trl.experimental.cpo.cpo_trainer").CPOTrainer
    stub = trl_stub(trl_cpo, loss_type="simpo", beta=beta, simpo_gamma=gamma, label_smoothing=label_smoothing,
                    alpha=0.0, cpo_alpha=0.0)
    # the loss on the same per-token average log-probs, per pair, in float64
    logps, _, tokens = random_pairs(seed=2)
    out = dpo_loss(logps[:6], logps[6:], beta=beta, loss_type="simpo", label_smoothing=label_smoothing,
                   chosen_tokens_B=tokens[:6], rejected_tokens_B=tokens[6:], simpo_gamma=gamma)
    average = logps / tokens
    losses, chosen_rewards, rejected_rewards = stub.cpo_loss(average[:6], average[6:])
    torch.testing.assert_close(out.losses_B, losses, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.chosen_rewards_B, chosen_rewards, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.rejected_rewards_B, rejected_rewards, rtol=1e-12, atol=1e-12)
    # the whole batch loss from the logits, through TRL's own log-probs and length normalisation
    batch, logits = random_sequences(pairs=4, prompt=3, seed=3)
    expected, metrics = stub.get_batch_loss_metrics(lambda *args, **kwargs: SimpleNamespace(logits=logits), batch)
    mine = ours_from_logits("simpo", beta, logits, batch, label_smoothing=label_smoothing, simpo_gamma=gamma)
    torch.testing.assert_close(mine.losses_B.mean(), expected, rtol=1e-6, atol=1e-6)
    assert mine.losses_B.std() > 1e-3  # the pairs differ, so a mix-up of pairs would show
    assert reward_metrics(mine.chosen_rewards_B, mine.rejected_rewards_B)["margin"].item() == pytest.approx(
        metrics["rewards/margins"], abs=1e-5)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_orpo_equals_trl(beta):
    trl_orpo = pytest.importorskip("trl.experimental.orpo.orpo_trainer").ORPOTrainer
    stub = trl_stub(trl_orpo, beta=beta)
    logps, _, tokens = random_pairs(seed=4)
    logps = logps.float()  # TRL's odds_ratio_loss computes in fp32 whatever it is given
    out = dpo_loss(logps[:6], logps[6:], beta=beta, loss_type="orpo", chosen_tokens_B=tokens[:6],
                   rejected_tokens_B=tokens[6:])
    average = logps / tokens
    losses, chosen_rewards, _, _, _ = stub.odds_ratio_loss(average[:6], average[6:])
    # TRL's loss is nll - mean(losses): its odds-ratio term per pair is -losses, our NLL per pair -average
    torch.testing.assert_close(out.losses_B, -average[:6] - losses, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(out.chosen_rewards_B, chosen_rewards, rtol=1e-7, atol=1e-7)
    # the whole loss, NLL included, from the logits: TRL's NLL covers the prompt too, so a one-token prompt
    # (never a target), one pair per call (TRL averages its NLL over the batch's tokens, ours per pair)
    batch, logits = random_sequences(pairs=4, prompt=1, seed=5)
    mine = ours_from_logits("orpo", beta, logits, batch)
    for i in range(4):
        one = {key: value[i : i + 1] for key, value in batch.items()}
        rows = torch.tensor([i, 4 + i])
        expected, _ = stub.get_batch_loss_metrics(lambda *args, **kwargs: SimpleNamespace(logits=logits[rows]), one)
        torch.testing.assert_close(mine.losses_B[i], expected, rtol=1e-6, atol=1e-6)


def test_reference_free_losses_refuse_what_they_cannot_use():
    logps, _, tokens = random_pairs(pairs=2)
    with pytest.raises(ValueError, match="chosen_tokens_B"):
        dpo_loss(logps[:2], logps[2:], loss_type="simpo")
    with pytest.raises(ValueError, match="label_smoothing=0.1 has no meaning for loss_type='orpo'"):
        dpo_loss(logps[:2], logps[2:], loss_type="orpo", label_smoothing=0.1, chosen_tokens_B=tokens[:2],
                 rejected_tokens_B=tokens[2:])
