"""Hugging Face adapter for LongCat-Flash (LongcatFlashForCausalLM, arXiv 2509.01322). Each of its
`num_layers` layers is our ShortcutMoEBlock: two (MLA with LoRA scaling + dense SwiGLU) sublayers and
a shortcut MoE whose softmax router (no renormalisation, `routed_scaling_factor`, the
auxiliary-loss-free e_score_correction_bias) chooses among `n_routed_experts` SwiGLU experts and
`zero_expert_num` zero-computation (identity) experts. transformers keeps the sublayer pairs as
lists (self_attn.0/1, mlps.0/1, input_layernorm.0/1, post_attention_layernorm.0/1)."""

import torch

from train.model.hf import deepseek_v3, llama
from train.model.hf.moe import expert_rules, glu_rules, moe_config
from train.model.hf.weights import Rule

MODEL_TYPE, ARCHITECTURE, FAMILY = "longcat_flash", "LongcatFlashForCausalLM", "longcat_flash"

WEIGHTS = [
    Rule(("embed.weight",), "model.embed_tokens.weight"),
    *[rule for j in (0, 1) for rule in (
        Rule((f"layers.{{i}}.blocks.{j}.mixer_norm.weight",), f"model.layers.{{i}}.input_layernorm.{j}.weight"),
        Rule((f"layers.{{i}}.blocks.{j}.ffn_norm.weight",), f"model.layers.{{i}}.post_attention_layernorm.{j}.weight"),
        *[Rule((f"layers.{{i}}.blocks.{j}.mixer.{p}.{w}",), f"model.layers.{{i}}.self_attn.{j}.{p}.{w}")
          for p in deepseek_v3.MLA_WEIGHTS for w in ("weight", "bias")],
        *glu_rules(f"layers.{{i}}.blocks.{j}.ffn", f"model.layers.{{i}}.mlps.{j}"),
    )],
    Rule(("layers.{i}.moe.router.gate.weight",), "model.layers.{i}.mlp.router.classifier.weight"),
    Rule(("layers.{i}.moe.router.score_correction_bias",), "model.layers.{i}.mlp.router.e_score_correction_bias"),
    *expert_rules("layers.{i}.moe", "model.layers.{i}.mlp"),
    Rule(("final_norm.weight",), "model.norm.weight"),
    Rule(("output.weight",), "lm_head.weight"),
]
IGNORED = llama.IGNORED + (r"^model\.mtp\.",)  # multi-token-prediction weights of the released checkpoint


def config_from_hf(hf: dict) -> dict:
    num_layers = hf["num_layers"]
    hf = {**hf, "num_hidden_layers": num_layers, "head_dim": hf["qk_rope_head_dim"], "intermediate_size": hf["ffn_hidden_size"],
          "rope_parameters": hf.get("rope_parameters") or {"rope_type": "default", "rope_theta": 10000000.0}}
    base = llama.config_from_hf(hf, family=FAMILY)
    base["position"]["interleaved"] = True  # apply_rotary_pos_emb_interleave
    base["mixers"] = {"mla": deepseek_v3.mla_from_hf(hf, lora_scale=True)}
    base["layer_mixers"] = ["mla"]
    base["ffns"]["swiglu"]["bias"] = False
    base["ffns"]["moe"] = {"kind": "moe", "activation": base["ffns"]["swiglu"]["activation"], "moe": {
        "num_experts": hf["n_routed_experts"],
        "hidden_dim": hf["expert_ffn_hidden_size"],
        "num_zero_experts": hf.get("zero_expert_num") or 0,
        "router": {"kind": "softmax", "top_k": hf["moe_topk"], "renormalize": False, "bias": hf.get("router_bias", False),
                   "scaling_factor": hf.get("routed_scaling_factor", 6.0), "score_correction_bias": True},
    }}
    base["shortcut_moe"] = "moe"
    return base


def config_to_hf(config) -> dict:
    if config.shortcut_moe is None:
        raise ValueError("the longcat_flash family needs model.shortcut_moe")
    mla, ffn = config.layer_mixer(0).mla, config.layer_ffn(0)
    moe, _ = moe_config(config)
    m, r = moe.moe, moe.moe.router
    hf_act = {ours: theirs for theirs, ours in llama.HF_ACTIVATIONS.items()}
    return {
        "architectures": [ARCHITECTURE],
        "model_type": MODEL_TYPE,
        "vocab_size": config.vocab_size,
        "hidden_size": config.dim,
        "num_layers": config.num_layers,
        "num_attention_heads": mla.num_heads,
        "num_key_value_heads": mla.num_heads,
        "ffn_hidden_size": ffn.hidden_dim,
        "hidden_act": hf_act.get(ffn.activation, ffn.activation),
        "q_lora_rank": mla.q_lora_rank,
        "kv_lora_rank": mla.kv_lora_rank,
        "qk_nope_head_dim": mla.qk_nope_head_dim,
        "qk_rope_head_dim": mla.qk_rope_head_dim,
        "head_dim": mla.qk_rope_head_dim,
        "v_head_dim": mla.v_head_dim,
        "attention_bias": mla.bias,
        "n_routed_experts": m.num_experts,
        "zero_expert_num": m.num_zero_experts,
        "expert_ffn_hidden_size": m.hidden_dim,
        "moe_topk": r.top_k,
        "routed_scaling_factor": r.scaling_factor,
        "router_bias": r.bias,
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm.eps,
        "tie_word_embeddings": config.tie_embeddings,
        "rope_parameters": llama.position_to_hf(config.position),
        "dtype": "float32",
    }


def finish_hf_weights(hf_state: dict, config) -> dict:
    """transformers' LongcatFlashExperts holds gate/up weights for the zero experts too (gate_up_proj is
    [E + Z, 2F, D]) that its forward never reads, since a zero expert is the identity: export writes them as
    zeros, after the E routed experts."""
    moe = moe_config(config)[0].moe
    for i in range(config.num_layers):
        for proj in ("gate_proj", "up_proj"):
            template = hf_state[f"model.layers.{i}.mlp.experts.0.{proj}.weight"]
            for e in range(moe.num_experts, moe.num_experts + moe.num_zero_experts):
                hf_state[f"model.layers.{i}.mlp.experts.{e}.{proj}.weight"] = torch.zeros_like(template)
    return hf_state
