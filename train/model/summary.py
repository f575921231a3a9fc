"""Model arithmetic: parameters per component, training FLOPs per token, KV-cache bytes.

Parameters are counted on the real module built on the meta device. FLOPs follow the PaLM
convention (Chowdhery et al. 2022, appendix B; also nanoGPT's and torchtitan's MFU):
    training FLOPs/token = 6 * N_matmul + sum over layers of the mixer's score FLOPs,
where N_matmul counts the weights of every matmul a token goes through (all Linear layers and
the output head, the tied embedding included; not the embedding lookup, norms or biases), and
softmax attention adds 12 * H * head_dim * T (QK^T and AV, forward + backward, T = context, or
the window for sliding layers; not halved for causality). Each mixer reports its own score
FLOPs and KV-cache bytes, so new mixers (MLA, linear attention) bring their own numbers: a
cache is a part that grows per token (keys/values; MLA's latent + rope key) plus a fixed-size part
(conv + recurrent state of linear attention / SSM layers, `state_bytes`), and `mha_cache_bytes`
is what an MHA layer with the same heads and head dims would cache, to show the saving.

Mixture of experts: total parameters count every expert; active parameters and FLOPs count what one
token goes through: everything dense (router and shared experts included) plus k_routed routed experts
per MoE layer, where k_routed = top_k * (1 - rho) and rho is the fraction of choices that go to
zero-computation experts (they cost no FLOPs). rho is not fixed by the architecture: by default it is
Z / (E + Z), the share a perfectly balanced router gives the Z zero experts among E + Z (what the
aux-free bias steers towards); pass `zero_fraction` (e.g. measured with moe_metrics) to override.

Residual-stream operators and multi-token prediction (train/model/residual/, train/model/mtp.py) count as
their own components, `residual` and `mtp`, present only when the model has them. Hyper-connections'
projections (dynamic HC's W, mHC's fn) are matmul weights; their stream mixing adds
`residual_flops_per_token` (multiply-adds of the mixing, x2 x3 for forward + backward) and widens the
residual stream a token carries between layers to n x dim (`residual_stream_bytes_per_token`).
Training FLOPs count the MTP modules (their weights, the shared output head once more per module and their
attention scores; `mtp_flops_per_token`); the parameter totals, the active parameters and the KV cache
are the inference model's, which never runs them (DeepSeek-V3's 671B excludes its MTP module).
"""

from dataclasses import dataclass, field

import torch
from torch import nn

from train.model.block import Block
from train.model.config import ModelConfig
from train.model.moe.layer import MoE
from train.model.norm import NORMS
from train.model.residual import StreamSum
from train.model.residual.branch_scale import LayerScale
from train.model.residual.hyper_connections import HyperConnection
from train.model.residual.manifold_hyper_connections import ManifoldHyperConnection, ManifoldHyperHead
from train.model.residual.value_residual import ValueResidual
from train.model.transformer import Transformer

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp8": torch.float8_e4m3fn}
COMPONENTS = ("embeddings", "mixers", "feed_forward", "norms", "output_head")
EXTRA_COMPONENTS = ("residual", "mtp")  # in `params` only when the model has them
RESIDUAL_MODULES = (HyperConnection, ManifoldHyperConnection, ManifoldHyperHead, LayerScale, ValueResidual)


@dataclass
class Summary:
    context: int
    dtype: str
    params: dict[str, int] = field(default_factory=dict)  # per component, see COMPONENTS
    params_total: int = 0
    params_active: int = 0  # per token: all but the routed experts a token does not use (MoE, module docstring)
    matmul_params: int = 0  # every matmul weight, all experts included
    matmul_params_active: int = 0  # the matmul weights one token goes through
    routed_experts_per_token: list[float] = field(default_factory=list)  # per MoE layer: top_k * (1 - rho)
    flops_per_token: int = 0  # training, PaLM convention (module docstring), active weights
    attention_flops_per_token: int = 0  # the score part of flops_per_token
    kv_bytes_per_token_per_layer: list[int] = field(default_factory=list)  # one cached token, each layer (growing part)
    state_bytes_per_layer: list[int] = field(default_factory=list)  # fixed-size state, each layer (linear mixers)
    kv_bytes_total: int = 0  # cache of one sequence of `context` tokens, all layers, state included
    mha_kv_bytes_per_token: int = 0  # an MHA cache with the same heads and head dims, all layers
    residual_flops_per_token: int = 0  # training FLOPs of hyper-connections' stream mixing (part of flops_per_token)
    residual_stream_bytes_per_token: int = 0  # the residual stream between two layers: streams x dim x dtype
    mtp_params: int = 0  # the MTP modules' own parameters (embedding and head shared), not in params_total
    mtp_flops_per_token: int = 0  # training FLOPs of the MTP modules (part of flops_per_token)


def _component(model: Transformer, module_name: str) -> str:
    module = model.get_submodule(module_name)
    if module_name.startswith("mtp."):
        return "mtp"
    if module_name.startswith(("embed", "position")):
        return "embeddings"
    if module_name.startswith("output"):
        return "output_head"
    if isinstance(module, RESIDUAL_MODULES) or ".mixer_connection." in module_name or ".ffn_connection." in module_name:
        return "residual"  # (the dynamic hyper-connections' own norms too)
    if isinstance(module, NORMS):
        return "norms"
    return "mixers" if ".mixer." in f"{module_name}." else "feed_forward"


def count_params(model: Transformer) -> dict[str, int]:
    counts = dict.fromkeys(COMPONENTS, 0)
    for module_name, module in model.named_modules():
        for param in module.parameters(recurse=False):
            component = _component(model, module_name)
            counts[component] = counts.get(component, 0) + param.numel()
    return counts


def hyper_connection_numbers(model: Transformer) -> tuple[int, int]:
    """(matmul weights of the hyper-connections' projections, training FLOPs per token of their stream mixing:
    3 x 2 x multiply-adds). HC: A^T H [(n+1) n D] and B y [n D]; mHC: pre H [n D], comb^T H [n n D], post y [n D]."""
    matmul = mixing = 0
    for m in model.modules():
        n, D = model.config.residual.hyper_connections.streams, model.config.dim
        if isinstance(m, HyperConnection):
            matmul += 0 if m.norm is None else m.dynamic_alpha_fn.numel() + m.dynamic_beta_fn.numel()
            mixing += (n + 1) * n * D + n * D
        elif isinstance(m, ManifoldHyperConnection):
            matmul += m.fn.numel()
            mixing += (n * n + 2 * n) * D
        elif isinstance(m, ManifoldHyperHead):
            matmul += m.hc_fn.numel()
            mixing += n * D
        elif isinstance(m, StreamSum):
            mixing += n * D
    return matmul, 6 * mixing


def summarize(config: ModelConfig, context: int | None = None, dtype: str = "bf16", zero_fraction: float | None = None) -> Summary:
    """Numbers for `config` at `context` tokens (default: config.max_seq_len) with the KV cache in
    `dtype`; `zero_fraction`: share of MoE choices taken by zero experts (default Z / (E + Z))."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; use one of {sorted(DTYPES)}")
    context = context or config.max_seq_len
    with torch.device("meta"):
        model = Transformer(config)
    params = count_params(model)
    mtp_params = params.get("mtp", 0)
    linears = [m for name, m in model.named_modules() if isinstance(m, nn.Linear) and not name.startswith("mtp.")]
    hc_matmul, residual_flops = hyper_connection_numbers(model)
    matmul = sum(m.weight.numel() for m in linears) + hc_matmul
    if model.output is None:  # tied: the embedding table is also the output matmul
        matmul += model.embed.weight.numel()
    total = active = sum(params.values()) - mtp_params
    matmul_active, routed = matmul, []
    main_moe = [m for name, m in model.named_modules() if isinstance(m, MoE) and not name.startswith("mtp.")]
    for moe in main_moe:
        E, Z = moe.num_experts, moe.num_zero_experts
        rho = Z / (E + Z) if zero_fraction is None else zero_fraction
        k_routed = moe.top_k * (1 - rho)
        ex = moe.experts
        weights = sum(w.numel() for w in (ex.w1_EFD, ex.w3_EFD, ex.w2_EDF)) // E
        expert_params = sum(p.numel() for p in ex.parameters()) // E
        matmul += weights * E
        matmul_active += round(weights * k_routed)
        active -= round(expert_params * (E - k_routed))
        routed.append(k_routed)
    mixers = [block.mixer for block in model.layers.modules() if isinstance(block, Block)]
    attention_flops = sum(m.score_flops_per_token(context) for m in mixers)
    mtp_flops = 0 if model.mtp is None else mtp_training_flops(model, context, zero_fraction)
    return Summary(
        context=context,
        dtype=dtype,
        params=params,
        params_total=total,
        params_active=active,
        matmul_params=matmul,
        matmul_params_active=matmul_active,
        routed_experts_per_token=routed,
        flops_per_token=6 * matmul_active + attention_flops + residual_flops + mtp_flops,
        attention_flops_per_token=attention_flops,
        kv_bytes_per_token_per_layer=[m.cache_bytes(1, DTYPES[dtype]) - m.state_bytes(DTYPES[dtype]) for m in mixers],
        state_bytes_per_layer=[m.state_bytes(DTYPES[dtype]) for m in mixers],
        kv_bytes_total=sum(m.cache_bytes(context, DTYPES[dtype]) for m in mixers),
        mha_kv_bytes_per_token=sum(m.mha_cache_bytes(1, DTYPES[dtype]) for m in mixers),
        residual_flops_per_token=residual_flops,
        residual_stream_bytes_per_token=(config.residual.hyper_connections.streams if model.stream_head is not None else 1)
        * config.dim * DTYPES[dtype].itemsize,
        mtp_params=mtp_params,
        mtp_flops_per_token=mtp_flops,
    )


def mtp_training_flops(model: Transformer, context: int, zero_fraction: float | None) -> int:
    """6 x (the MTP modules' matmul weights a token goes through + the shared output head once per module)
    + their attention scores at `context`; routed experts counted as in the main model."""
    matmul = 0
    for module in model.mtp:
        matmul += sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))
        matmul += model.output_weight().numel()
        for moe in (m for m in module.modules() if isinstance(m, MoE)):
            E, Z = moe.num_experts, moe.num_zero_experts
            rho = Z / (E + Z) if zero_fraction is None else zero_fraction
            ex = moe.experts
            matmul += round(sum(w.numel() for w in (ex.w1_EFD, ex.w3_EFD, ex.w2_EDF)) // E * moe.top_k * (1 - rho))
    scores = sum(b.mixer.score_flops_per_token(context) for b in model.mtp.modules() if isinstance(b, Block))
    return 6 * matmul + scores
