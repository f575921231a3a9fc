"""Hugging Face adapter for Qwen3-MoE (Qwen3MoeForCausalLM): Qwen3 attention, and in the layers that
`mlp_only_layers`/`decoder_sparse_step` select, a softmax top-k router (`norm_topk_prob`
renormalises the chosen weights) over `num_experts` SwiGLU experts of `moe_intermediate_size`."""

from train.model.hf import llama, qwen3
from train.model.hf.moe import get, expert_rules, layer_pattern, moe_config, qwen_moe_layers
from train.model.hf.weights import Rule

MODEL_TYPE, ARCHITECTURE, FAMILY = "qwen3_moe", "Qwen3MoeForCausalLM", "qwen3_moe"

WEIGHTS = qwen3.WEIGHTS + [
    Rule(("layers.{i}.ffn.router.gate.weight",), "model.layers.{i}.mlp.gate.weight"),
    *expert_rules("layers.{i}.ffn", "model.layers.{i}.mlp"),
]
IGNORED = llama.IGNORED


def config_from_hf(hf: dict) -> dict:
    # Qwen3MoeAttention applies `sliding_window` (when use_sliding_window) to every layer
    base = qwen3.config_from_hf({**hf, "layer_types": ["sliding_attention"] * hf["num_hidden_layers"]})
    base["family"] = FAMILY
    base["ffns"]["swiglu"]["bias"] = False
    base["ffns"]["moe"] = {"kind": "moe", "activation": base["ffns"]["swiglu"]["activation"], "moe": {
        "num_experts": get(hf, "num_experts", "num_local_experts"),
        "hidden_dim": hf["moe_intermediate_size"],
        "router": {"kind": "softmax", "top_k": hf["num_experts_per_tok"], "renormalize": hf.get("norm_topk_prob", False)},
    }}
    moe = set(qwen_moe_layers(hf, default_experts=128))
    base["layer_ffns"] = layer_pattern(["moe" if i in moe else "swiglu" for i in range(hf["num_hidden_layers"])])
    return base


def config_to_hf(config) -> dict:
    moe, dense = moe_config(config)
    hf = qwen3.config_to_hf(config)
    hf.update(
        architectures=[ARCHITECTURE],
        model_type=MODEL_TYPE,
        intermediate_size=(dense or moe).hidden_dim,
        hidden_act={ours: theirs for theirs, ours in llama.HF_ACTIVATIONS.items()}[moe.activation],
        num_experts=moe.moe.num_experts,
        moe_intermediate_size=moe.moe.hidden_dim,
        num_experts_per_tok=moe.moe.router.top_k,
        norm_topk_prob=moe.moe.router.renormalize,
        decoder_sparse_step=1,
        mlp_only_layers=[i for i in range(config.num_layers) if config.layer_ffn(i).kind != "moe"],
    )
    return hf
