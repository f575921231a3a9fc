"""Forward + backward tokens/s of one MoE layer: ours (grouped matmul, sorted loop), a naive loop over
all experts, and transformers' Qwen3MoeSparseMoeBlock on the same configuration and weights.

    python bench/moe.py [--tokens 4096] [--dim 512] [--experts 32] [--top-k 4] [--expert-dim 256] [--repeats 3] [--device cuda]

Softmax top-k router + SwiGLU experts (Qwen3-MoE), fp32 and bf16 on --device (default: CUDA when
available, else the CPU); best of `repeats` runs
after one warm-up, implementations interleaved, each round on new tokens (new expert loads). The naive loop runs every expert on a masked copy of all tokens (E x the routed
work: what "never a loop over all experts for every token" forbids). transformers 5 picks its experts
kernel with `experts_implementation`: "eager" loops over the experts hit, "grouped_mm" is its default.
Prints one table; no asserts.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import Qwen3MoeConfig  # noqa: E402
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock  # noqa: E402

from bench.harness import synchronize, trainer_numerics, where  # noqa: E402
from train.model.config import FFNConfig, ModelConfig, MoEConfig, RouterConfig  # noqa: E402
from train.model.moe.layer import MoE  # noqa: E402


def naive_all_experts(layer: MoE):
    """Every expert on every token, masked by the routing weight (zero where not chosen)."""

    def forward(x_BTD):
        x_TD = x_BTD.reshape(-1, x_BTD.shape[-1])
        weights_TK, choices_TK, _, _ = layer.router(x_BTD)
        dense_TE = x_TD.new_zeros(x_TD.shape[0], layer.num_experts).scatter_add_(1, choices_TK, weights_TK)
        ex, y_TD = layer.experts, torch.zeros_like(x_TD)
        for e in range(layer.num_experts):
            h_TF = torch.nn.functional.silu(x_TD @ ex.w1_EFD[e].T) * (x_TD @ ex.w3_EFD[e].T)
            y_TD = y_TD + dense_TE[:, e : e + 1] * (h_TF @ ex.w2_EDF[e].T)
        return y_TD.view_as(x_BTD)

    return forward


def build(args, dtype, device):
    torch.manual_seed(0)
    hf_config = Qwen3MoeConfig(hidden_size=args.dim, moe_intermediate_size=args.expert_dim, num_experts=args.experts,
                               num_experts_per_tok=args.top_k, norm_topk_prob=True)
    ffn = FFNConfig(kind="moe", moe=MoEConfig(num_experts=args.experts, hidden_dim=args.expert_dim,
                                              router=RouterConfig(kind="softmax", top_k=args.top_k, renormalize=True)))
    ours = {g: MoE(FFNConfig(kind="moe", moe=MoEConfig(**{**ffn.moe.__dict__, "grouped_mm": g})), ModelConfig(dim=args.dim), 0)
            for g in (True, False)}
    hf = {}
    for impl in ("eager", "grouped_mm"):
        hf_config._experts_implementation = impl
        hf[impl] = Qwen3MoeSparseMoeBlock(hf_config)
    with torch.no_grad():
        for layer in ours.values():
            layer.router.gate.weight.normal_(0, 0.5)
            for w in (layer.experts.w1_EFD, layer.experts.w3_EFD, layer.experts.w2_EDF):
                w.normal_(0, 0.02)
        src = ours[True]
        for layer in [ours[False], *hf.values()]:
            if isinstance(layer, MoE):
                layer.load_state_dict(src.state_dict())
                continue
            layer.gate.weight.copy_(src.router.gate.weight)
            layer.experts.gate_up_proj.copy_(torch.cat([src.experts.w1_EFD, src.experts.w3_EFD], dim=1))
            layer.experts.down_proj.copy_(src.experts.w2_EDF)
    modules = {"ours, grouped_mm": ours[True], "ours, sorted loop": ours[False], "naive loop over all experts": ours[True],
               "transformers, eager": hf["eager"], "transformers, grouped_mm": hf["grouped_mm"]}
    for m in modules.values():
        m.to(device, dtype)
    calls = {name: (naive_all_experts(m) if name.startswith("naive") else m) for name, m in modules.items()}
    return modules, calls


def seconds(module, call, x_BTD):
    module.zero_grad(set_to_none=True)
    x = x_BTD.detach().requires_grad_()
    synchronize(x.device)
    start = time.perf_counter()
    call(x).float().square().mean().backward()
    synchronize(x.device)
    return time.perf_counter() - start


def tokens_per_second(modules, calls, rounds_BTD, repeats):
    """Round-robin over the implementations, best of `repeats` after a warm-up each, so that a
    machine shared with other jobs slows all of them alike. Each round routes new tokens (the same for
    every implementation), as every training step does: a kernel tuned for the last step's expert loads
    does not count."""
    best = {name: float("inf") for name in calls}
    for i, x_BTD in enumerate(rounds_BTD[: repeats + 1]):
        for name in calls:
            elapsed = seconds(modules[name], calls[name], x_BTD)
            best[name] = min(best[name], elapsed) if i else best[name]
    return {name: x_BTD.shape[0] * x_BTD.shape[1] / t for name, t in best.items()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--experts", type=int, default=32)
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--expert-dim", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    trainer_numerics(device)
    print(f"MoE layer fwd+bwd, {args.tokens} tokens, dim {args.dim}, {args.experts} experts of {args.expert_dim}, top {args.top_k}, "
          f"{where(device)}")
    rounds_BTD = torch.randn(args.repeats + 1, args.tokens // 512, 512, args.dim, device=device).unbind(0)
    x_BTD = rounds_BTD[0]
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        modules, calls = build(args, dtype, device)
        with torch.no_grad():  # same weights, same outputs (sanity, not a test)
            ref = calls["ours, grouped_mm"](x_BTD[:1].to(dtype)).float()
            for name in calls:
                err = (calls[name](x_BTD[:1].to(dtype)).float() - ref).abs().max().item()
                assert err < (1e-4 if dtype == torch.float32 else 5e-2), (name, err)
        for name, rate in tokens_per_second(modules, calls, [x.to(dtype) for x in rounds_BTD], args.repeats).items():
            results.setdefault(name, {})[dtype] = rate
    peer = results["transformers, grouped_mm"]
    print(f"{'implementation':<30}{'fp32 tok/s':>12}{'bf16 tok/s':>12}{'fp32 vs HF':>12}{'bf16 vs HF':>12}")
    for name, r in results.items():
        print(f"{name:<30}{r[torch.float32]:>12,.0f}{r[torch.bfloat16]:>12,.0f}"
              f"{r[torch.float32] / peer[torch.float32]:>11.2f}x{r[torch.bfloat16] / peer[torch.bfloat16]:>11.2f}x")
    print("vs HF: relative to transformers' default experts kernel (grouped_mm) on the same weights")


if __name__ == "__main__":
    main()
