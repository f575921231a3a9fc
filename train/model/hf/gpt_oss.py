"""Hugging Face adapter for GPT-OSS (GptOssForCausalLM): GQA attention with biases and learned sinks,
sliding (`sliding_window`) and full layers from `layer_types`, YaRN rope; every layer an MoE with a
biased router (top-k on the logits, softmax over the k chosen), `num_local_experts` experts with
biases and the clamped SwiGLU (`swiglu_limit`, `swiglu_alpha`). transformers stores the experts
fused: gate_up_proj [E, D, 2F] with gate and up in alternate columns, down_proj [E, F, D]."""

from train.model.hf import llama
from train.model.hf.moe import moe_config
from train.model.hf.weights import Rule

MODEL_TYPE, ARCHITECTURE, FAMILY = "gpt_oss", "GptOssForCausalLM", "gpt_oss"

_EXPERTS = ("layers.{i}.ffn.experts", "model.layers.{i}.mlp.experts")
WEIGHTS = [r for r in llama.WEIGHTS if ".mlp." not in r.hf] + [
    Rule(("layers.{i}.mixer.sinks",), "model.layers.{i}.self_attn.sinks"),
    *[Rule((f"layers.{{i}}.ffn.router.gate.{w}",), f"model.layers.{{i}}.mlp.router.{w}") for w in ("weight", "bias")],
    Rule((f"{_EXPERTS[0]}.w1_EFD", f"{_EXPERTS[0]}.w3_EFD"), f"{_EXPERTS[1]}.gate_up_proj", transpose=True, interleave=True),
    Rule((f"{_EXPERTS[0]}.b1_EF", f"{_EXPERTS[0]}.b3_EF"), f"{_EXPERTS[1]}.gate_up_proj_bias", interleave=True),
    Rule((f"{_EXPERTS[0]}.w2_EDF",), f"{_EXPERTS[1]}.down_proj", transpose=True),
    Rule((f"{_EXPERTS[0]}.b2_ED",), f"{_EXPERTS[1]}.down_proj_bias"),
]
IGNORED = llama.IGNORED

DEFAULT_ROPE = {"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                "truncate": False, "original_max_position_embeddings": 4096}


def config_from_hf(hf: dict) -> dict:
    n = hf["num_hidden_layers"]
    layer_types = hf.get("layer_types") or ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n)]
    windows = [hf.get("sliding_window", 128) if t == "sliding_attention" else None for t in layer_types]
    hf = {"attention_bias": True, "head_dim": 64, **hf, "rope_parameters": hf.get("rope_parameters") or DEFAULT_ROPE}
    base = llama.config_from_hf(hf, family=FAMILY, windows=windows)
    for mixer in base["mixers"].values():
        mixer["attention"]["sinks"] = True
    base["ffns"] = {"moe": {"kind": "moe", "activation": "silu", "moe": {
        "num_experts": hf.get("num_local_experts", 128),
        "hidden_dim": hf["intermediate_size"],
        "bias": True,
        "swiglu_limit": hf.get("swiglu_limit", 7.0),
        "swiglu_alpha": hf.get("swiglu_alpha", 1.702),
        "router": {"kind": "topk_softmax", "top_k": hf.get("num_experts_per_tok", 4), "bias": True},
    }}}
    base["layer_ffns"] = ["moe"]
    return base


def config_to_hf(config) -> dict:
    moe, _ = moe_config(config)
    windows = [config.layer_mixer(i).attention.window for i in range(config.num_layers)]
    sliding = [w for w in windows if w is not None]
    hf = llama.config_to_hf(config, MODEL_TYPE, ARCHITECTURE)
    for key in ("mlp_bias", "hidden_act"):
        del hf[key]
    hf.update(
        intermediate_size=moe.moe.hidden_dim,
        num_local_experts=moe.moe.num_experts,
        num_experts_per_tok=moe.moe.router.top_k,
        swiglu_limit=moe.moe.swiglu_limit,
        swiglu_alpha=moe.moe.swiglu_alpha,
        sliding_window=sliding[0] if sliding else None,  # one window for all sliding layers
        layer_types=["full_attention" if w is None else "sliding_attention" for w in windows],
    )
    return hf
