"""Hugging Face adapter for Mixtral (MixtralForCausalLM; Jiang et al. 2024, arXiv 2401.04088):
Mistral attention, and in every layer an MoE of `num_local_experts` SwiGLU experts of
`intermediate_size` under a softmax top-k router whose chosen weights are renormalised.

transformers 5 runs the experts as fused 3-D tensors (experts.gate_up_proj [E, 2F, D], down_proj
[E, D, F]) but saves and loads the original checkpoint layout, block_sparse_moe.experts.{e}.w1 (gate),
w3 (up) and w2 (down), which is what config.json folders on disk hold. `router_jitter_noise` is
training-time noise and is not imported.
"""

from train.model.hf import llama, mistral
from train.model.hf.moe import expert_rules, get, moe_config
from train.model.hf.weights import Rule

MODEL_TYPE, ARCHITECTURE, FAMILY = "mixtral", "MixtralForCausalLM", "mixtral"

WEIGHTS = [rule for rule in llama.WEIGHTS if ".mlp." not in rule.hf] + [
    Rule(("layers.{i}.ffn.router.gate.weight",), "model.layers.{i}.block_sparse_moe.gate.weight"),
    *expert_rules("layers.{i}.ffn", "model.layers.{i}.block_sparse_moe", names=("w1", "w3", "w2")),
]
IGNORED = llama.IGNORED


def config_from_hf(hf: dict) -> dict:
    base = mistral.config_from_hf(hf, family=FAMILY)
    swiglu = base["ffns"].pop("swiglu")
    base["ffns"]["moe"] = {"kind": "moe", "activation": swiglu["activation"], "moe": {
        "num_experts": get(hf, "num_local_experts", "num_experts"),
        "hidden_dim": hf["intermediate_size"],
        "router": {"kind": "softmax", "top_k": hf["num_experts_per_tok"], "renormalize": True},
    }}
    base["layer_ffns"] = ["moe"]
    return base


def config_to_hf(config) -> dict:
    moe, _ = moe_config(config)
    hf = mistral.config_to_hf(config, MODEL_TYPE, ARCHITECTURE)
    hf.update(
        intermediate_size=moe.moe.hidden_dim,
        hidden_act={ours: theirs for theirs, ours in llama.HF_ACTIVATIONS.items()}[moe.activation],
        num_local_experts=moe.moe.num_experts,
        num_experts_per_tok=moe.moe.router.top_k,
    )
    return hf
