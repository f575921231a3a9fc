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
"""

from dataclasses import dataclass, field

import torch
from torch import nn

from train.model.config import ModelConfig
from train.model.norm import GatedRMSNorm, LayerNorm, RMSNorm
from train.model.transformer import Transformer

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp8": torch.float8_e4m3fn}
COMPONENTS = ("embeddings", "mixers", "feed_forward", "norms", "output_head")


@dataclass
class Summary:
    context: int
    dtype: str
    params: dict[str, int] = field(default_factory=dict)  # per component, see COMPONENTS
    params_total: int = 0
    matmul_params: int = 0
    flops_per_token: int = 0  # training, PaLM convention (module docstring)
    attention_flops_per_token: int = 0  # the score part of flops_per_token
    kv_bytes_per_token_per_layer: list[int] = field(default_factory=list)  # one cached token, each layer (growing part)
    state_bytes_per_layer: list[int] = field(default_factory=list)  # fixed-size state, each layer (linear mixers)
    kv_bytes_total: int = 0  # cache of one sequence of `context` tokens, all layers, state included
    mha_kv_bytes_per_token: int = 0  # an MHA cache with the same heads and head dims, all layers


def _component(model: Transformer, module_name: str) -> str:
    if module_name.startswith(("embed", "position")):
        return "embeddings"
    if module_name.startswith("output"):
        return "output_head"
    if isinstance(model.get_submodule(module_name), (RMSNorm, LayerNorm, GatedRMSNorm)):
        return "norms"
    return "mixers" if ".mixer." in f"{module_name}." else "feed_forward"


def count_params(model: Transformer) -> dict[str, int]:
    counts = dict.fromkeys(COMPONENTS, 0)
    for module_name, module in model.named_modules():
        for param in module.parameters(recurse=False):
            counts[_component(model, module_name)] += param.numel()
    return counts


def summarize(config: ModelConfig, context: int | None = None, dtype: str = "bf16") -> Summary:
    """Numbers for `config` at `context` tokens (default: config.max_seq_len) with the KV cache in `dtype`."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; use one of {sorted(DTYPES)}")
    context = context or config.max_seq_len
    with torch.device("meta"):
        model = Transformer(config)
    params = count_params(model)
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    if model.output is None:  # tied: the embedding table is also the output matmul
        matmul += model.embed.weight.numel()
    mixers = [layer.mixer for layer in model.layers]
    attention_flops = sum(m.score_flops_per_token(context) for m in mixers)
    return Summary(
        context=context,
        dtype=dtype,
        params=params,
        params_total=sum(params.values()),
        matmul_params=matmul,
        flops_per_token=6 * matmul + attention_flops,
        attention_flops_per_token=attention_flops,
        kv_bytes_per_token_per_layer=[m.cache_bytes(1, DTYPES[dtype]) - m.state_bytes(DTYPES[dtype]) for m in mixers],
        state_bytes_per_layer=[m.state_bytes(DTYPES[dtype]) for m in mixers],
        kv_bytes_total=sum(m.cache_bytes(context, DTYPES[dtype]) for m in mixers),
        mha_kv_bytes_per_token=sum(m.mha_cache_bytes(1, DTYPES[dtype]) for m in mixers),
    )
