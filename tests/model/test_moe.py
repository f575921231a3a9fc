"""MoE numerics against independent references: a naive per-token loop over each token's chosen
experts (the definition), the balancing losses written out from their papers' formulas, the
aux-free bias sign rule, and the load bookkeeping the trainer relies on."""

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from train.model import build_model
from train.model.config import FFNConfig, ModelConfig, MoEConfig, RouterConfig
from train.model.moe import experts
from train.model.moe.layer import MoE
from train.model.moe.metrics import moe_metrics


def make_moe(grouped=True, **moe) -> MoE:
    torch.manual_seed(0)
    router = RouterConfig(**moe.pop("router", {}))
    config = FFNConfig(kind="moe", moe=MoEConfig(**{"num_experts": 6, "hidden_dim": 12, "router": router, "grouped_mm": grouped, **moe}))
    layer = MoE(config, ModelConfig(dim=16, num_layers=2), 0)
    with torch.no_grad():
        for name, param in layer.named_parameters():
            param.normal_(0, 1.0 if "router" in name else 0.3)
        if layer.router.score_correction_bias is not None:
            layer.router.score_correction_bias.normal_(0, 0.1)
    return layer


def naive(layer: MoE, x_BTD, capacity=None):
    """y_t = sum_k w_tk f_{e_tk}(x_t), one token and one choice at a time (zero experts: identity);
    with a capacity, an expert serves only its first `capacity` choices in token order. Returns y and
    the number of dropped choices."""
    x_TD = x_BTD.reshape(-1, x_BTD.shape[-1])
    weights_TK, choices_TK, _, _ = layer.router(x_BTD)
    ex, rows, served, dropped = layer.experts, [], [0] * layer.num_experts, 0
    for t in range(x_TD.shape[0]):
        y = torch.zeros_like(x_TD[t])
        for w, e in zip(weights_TK[t], choices_TK[t].tolist()):
            if e >= layer.num_experts:
                y = y + w * x_TD[t]
                continue
            if capacity is not None and served[e] == capacity:
                dropped += 1
                continue
            served[e] += 1
            gate = ex.w1_EFD[e] @ x_TD[t] + (0 if ex.b1_EF is None else ex.b1_EF[e])
            up = ex.w3_EFD[e] @ x_TD[t] + (0 if ex.b3_EF is None else ex.b3_EF[e])
            if ex.swiglu_limit is None:
                h = torch.nn.functional.silu(gate) * up
            else:
                g = gate.clamp(max=ex.swiglu_limit)
                h = (up.clamp(-ex.swiglu_limit, ex.swiglu_limit) + 1) * g * torch.sigmoid(ex.swiglu_alpha * g)
            y = y + w * (ex.w2_EDF[e] @ h + (0 if ex.b2_ED is None else ex.b2_ED[e]))
        if layer.shared_expert is not None:
            shared = layer.shared_expert(x_TD[t])
            y = y + (shared if layer.shared_gate is None else torch.sigmoid(layer.shared_gate(x_TD[t])) * shared)
        rows.append(y)
    return torch.stack(rows).view_as(x_BTD), dropped


VARIANTS = {
    "softmax_topk": {"router": {"kind": "softmax", "top_k": 2}},
    "sigmoid_groups_shared": {"shared_hidden_dim": 8, "router": {"kind": "sigmoid", "top_k": 2, "num_groups": 3, "topk_groups": 2,
                                                                 "scaling_factor": 2.5, "score_correction_bias": True}},
    "gpt_oss_clamped": {"bias": True, "swiglu_limit": 0.7, "router": {"kind": "topk_softmax", "top_k": 3, "bias": True}},
    "zero_experts_gated_shared": {"num_zero_experts": 3, "shared_hidden_dim": 8, "shared_gate": True,
                                  "router": {"kind": "softmax", "top_k": 3, "renormalize": False, "score_correction_bias": True}},
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_grouped_mm_and_sorted_loop_equal_naive_per_token(variant):
    x_BTD = torch.randn(2, 9, 16, generator=torch.Generator().manual_seed(1))
    grouped, looped = make_moe(True, **VARIANTS[variant]), make_moe(False, **VARIANTS[variant])
    expected = naive(grouped, x_BTD)[0].detach()
    assert expected.std() > 0.05
    torch.testing.assert_close(grouped(x_BTD), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(looped(x_BTD), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", ["softmax_topk", "zero_experts_gated_shared"])
@pytest.mark.parametrize("factor", [0.5, 1.0])
def test_capacity_factor_drops_the_later_tokens_choices(variant, factor):
    """capacity = ceil(factor * T * K / (E + Z)) choices per expert; the naive loop drops the same ones."""
    x_BTD = torch.randn(2, 9, 16, generator=torch.Generator().manual_seed(1))
    layer = make_moe(**VARIANTS[variant], capacity_factor=factor)
    K, experts = layer.top_k, layer.num_experts + layer.num_zero_experts
    capacity = -(-int(factor * 2 * 9 * K) // experts)
    expected, dropped = naive(layer, x_BTD, capacity)
    assert dropped > 0
    torch.testing.assert_close(layer(x_BTD), expected.detach(), atol=1e-5, rtol=1e-5)
    layer.record_loads()  # what the Transformer does after its forward
    loads = layer.loads()
    assert int(loads[-1]) == dropped and int(loads[:-1].sum()) == 2 * 9 * K  # choices count before the drop
    routed = int(loads[:-2].sum())
    assert moe_metrics([loads])["moe/layer0/dropped_fraction"] == dropped / routed


def test_a_capacity_no_expert_reaches_is_dropless():
    x_BTD = torch.randn(2, 9, 16, generator=torch.Generator().manual_seed(1))
    dropless = make_moe(**VARIANTS["zero_experts_gated_shared"])
    roomy = make_moe(**VARIANTS["zero_experts_gated_shared"], capacity_factor=100.0)
    assert torch.equal(roomy(x_BTD), dropless(x_BTD))
    roomy.record_loads()
    assert int(roomy.loads()[-1]) == 0 and int(roomy.loads()[:-1].sum()) == 2 * 9 * roomy.top_k  # counted, none dropped


def test_grouped_mm_gradients_equal_sorted_loop():
    x_BTD = torch.randn(2, 9, 16, generator=torch.Generator().manual_seed(1))
    grads = []
    for grouped in (True, False):
        layer = make_moe(grouped, **VARIANTS["gpt_oss_clamped"])
        layer(x_BTD).sum().backward()  # a sum: stride-0 gradients, which _grouped_mm's backward rejects unhooked
        grads.append({n: p.grad for n, p in layer.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", ["softmax_topk", "gpt_oss_clamped"])
def test_bf16_experts_on_the_cpu_pad_their_rows_and_change_nothing(variant, monkeypatch):
    """In bf16 on the CPU each expert's group is padded with zero rows to a multiple of CPU_BF16_ROWS (oneDNN
    then reuses its kernels): the outputs and gradients are those of the unpadded groups (a multiple of 1)."""
    x_BTD = torch.randn(2, 9, 16, generator=torch.Generator().manual_seed(1)).bfloat16()
    groups = []  # the group sizes the expert matmuls run on
    linear = experts.grouped_linear
    monkeypatch.setattr(experts, "grouped_linear", lambda x, w, counts_E, grouped, b=None: groups.append(counts_E) or linear(x, w, counts_E, grouped, b))
    results = []
    for multiple in (experts.CPU_BF16_ROWS, 1):
        monkeypatch.setattr(experts, "CPU_BF16_ROWS", multiple)
        layer = make_moe(**VARIANTS[variant], hidden_dim=16).bfloat16()  # bf16 grouped matmuls need 16-byte strides
        x = x_BTD.clone().requires_grad_()
        y_BTD = layer(x)
        y_BTD.float().square().sum().backward()
        results.append([y_BTD, x.grad] + [p.grad for p in layer.parameters()])
    padded, plain = groups[0], groups[-1]
    assert all(int(c) % 32 == 0 for c in padded) and padded.sum() > plain.sum() == 2 * 9 * make_moe(**VARIANTS[variant]).top_k
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-2, rtol=1e-2)  # about one bf16 rounding


def test_group_limited_choice_stays_in_the_best_groups():
    layer = make_moe(**VARIANTS["sigmoid_groups_shared"])
    x_BTD = torch.randn(4, 16, 16)
    logits = x_BTD.reshape(-1, 16) @ layer.router.gate.weight.T
    biased = logits.sigmoid() + layer.router.score_correction_bias
    _, choices_TK, _, _ = layer.router(x_BTD)
    for t in range(biased.shape[0]):  # groups of 2 experts: a group's score is the sum of its two
        group_scores = biased[t].view(3, 2).sum(-1)
        allowed = set(group_scores.topk(2).indices.tolist())
        assert {e // 2 for e in choices_TK[t].tolist()} <= allowed
        best = sorted((e for e in range(6) if e // 2 in allowed), key=lambda e: -biased[t, e])[:2]
        assert set(best) == set(choices_TK[t].tolist())


def test_balancing_losses_match_their_formulas():
    x_BTD = torch.randn(3, 8, 16, generator=torch.Generator().manual_seed(2))
    layer = make_moe(router={"kind": "sigmoid", "top_k": 2, "aux_loss_coef": 1.0, "aux_loss_kind": "sequence"})
    _, choices_TK, aux, _ = layer.router(x_BTD)
    s = (x_BTD @ layer.router.gate.weight.T).sigmoid()
    expected = 0.0
    for b in range(3):  # DeepSeek-V3 eq. 17-20
        chosen = choices_TK.view(3, 8, 2)[b]
        f = torch.tensor([(chosen == i).sum().item() * 6 / (2 * 8) for i in range(6)])
        p = (s[b] / s[b].sum(-1, keepdim=True)).mean(0)
        expected += (f * p).sum() / 3
    torch.testing.assert_close(aux, expected, atol=1e-6, rtol=1e-6)

    from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

    layer = make_moe(router={"kind": "softmax", "top_k": 2, "aux_loss_coef": 1.0, "z_loss_coef": 0.1})
    logits = x_BTD.reshape(-1, 16) @ layer.router.gate.weight.T
    _, _, aux, _ = layer.router(x_BTD)
    switch = load_balancing_loss_func((logits,), 6, top_k=2) / 2  # transformers' f sums to k, ours to 1
    z = 0.1 * logits.logsumexp(-1).square().mean()
    torch.testing.assert_close(aux, switch + z, atol=1e-6, rtol=1e-6)


def test_global_batch_loss_counts_earlier_micro_batches():
    layer = make_moe(router={"kind": "softmax", "top_k": 2, "aux_loss_coef": 1.0})
    x1, x2 = torch.randn(2, 8, 16), torch.randn(2, 8, 16)
    layer(x1)
    layer.record_loads()
    counts_1 = layer.choice_counts.clone()
    layer(x2)
    layer.record_loads()
    logits = x2.reshape(-1, 16) @ layer.router.gate.weight.T
    total = layer.choice_counts.float()  # both micro-batches
    expected = 6 * (total / total.sum() * logits.softmax(-1).mean(0)).sum()
    torch.testing.assert_close(layer.aux_loss, expected, atol=1e-6, rtol=1e-6)
    assert not torch.equal(counts_1, layer.choice_counts)


def test_loads_accumulate_over_micro_batches_and_ignore_checkpoint_recompute():
    layer = make_moe(**VARIANTS["zero_experts_gated_shared"])
    x = torch.randn(2, 8, 16, requires_grad=True)
    checkpoint(layer, x, use_reentrant=False).sum().backward()  # recomputes the forward in backward
    layer.record_loads()  # after the forward (the Transformer's hidden_states): the recompute adds nothing
    layer(x.detach())
    layer.record_loads()
    loads = layer.loads()  # 6 routed experts, the zero experts, dropped (none: dropless)
    assert loads.shape == (8,) and int(loads.sum()) == 2 * 2 * 8 * 3
    assert int(loads[-2]) == int(layer.choice_counts[6:].sum()) > 0 and int(loads[-1]) == 0
    layer.reset_loads()
    assert int(layer.loads().sum()) == 0


def test_zero_expert_choices_cost_no_expert_rows():
    layer = make_moe(**VARIANTS["zero_experts_gated_shared"])
    rows = []
    layer.dispatch = lambda x_ND, counts_E, experts: rows.append(x_ND.shape[0]) or experts(x_ND, counts_E)
    layer(torch.randn(2, 8, 16))
    layer.record_loads()
    zero = int(layer.choice_counts[6:].sum())
    assert zero > 0 and rows == [2 * 8 * 3 - zero]


def test_bias_update_is_the_sign_rule_and_only_moves_the_choice():
    model = build_model("deepseek_v3_tiny")
    moe = model.layers[1].ffn
    loads = torch.tensor([5.0, 1, 9, 3, 3, 3, 0, 8, 0, 0])  # 8 routed experts, no zero experts, none dropped
    before = moe.router.score_correction_bias.clone()
    model.update_router_bias([loads])
    gamma = moe.router.config.bias_update_speed
    torch.testing.assert_close(moe.router.score_correction_bias - before, gamma * torch.sign(loads[:8].mean() - loads[:8]))
    x = torch.randn(1, 4, 64)
    moe.router.score_correction_bias.fill_(0)
    w0, c0, _, _ = moe.router(x)
    moe.router.score_correction_bias.fill_(0.5)  # the same shift for all: same choice, same weights
    w1, c1, _, _ = moe.router(x)
    assert torch.equal(c0, c1) and torch.equal(w0, w1)


def test_zero_expert_bias_update_shares_the_zero_count():
    layer = make_moe(**{**VARIANTS["zero_experts_gated_shared"], "router": {**VARIANTS["zero_experts_gated_shared"]["router"], "bias_update_speed": 0.1}})
    layer.router.score_correction_bias.zero_()
    layer.update_bias(torch.tensor([4.0, 4, 4, 4, 4, 4, 3, 0]))  # zero experts: 1 each, routed 4 each; mean 3.1
    torch.testing.assert_close(layer.router.score_correction_bias, torch.tensor([-0.1] * 6 + [0.1] * 3))


def test_aux_loss_protocol():
    dense = build_model("llama3_tiny")
    assert dense.aux_loss().item() == 0.0 and dense.expert_loads() == [] and dense.moe_layer_ids() == []
    model = build_model("qwen3_moe_tiny")
    model(torch.randint(0, 8192, (2, 8)))
    assert model.moe_layer_ids() == [0, 1]
    torch.testing.assert_close(model.aux_loss(), model.layers[0].ffn.aux_loss + model.layers[1].ffn.aux_loss)
    assert model.aux_loss().item() > 0 and model.aux_loss().requires_grad


def test_moe_metrics_by_hand():
    metrics = moe_metrics([torch.tensor([2.0, 4, 6, 4, 8, 4])], layer_ids=[3])  # 4 routed experts (mean 4), 8 zero choices, 4 dropped
    assert metrics["moe/layer3/load_min"] == 0.5 and metrics["moe/layer3/load_max"] == 1.5
    assert abs(metrics["moe/layer3/load_cv"] - 2 ** 0.5 / 4) < 1e-12  # population std sqrt(2)
    assert metrics["moe/layer3/zero_fraction"] == 1 / 3 and metrics["moe/layer3/dropped_fraction"] == 4 / 16
