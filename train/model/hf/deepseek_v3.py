"""Hugging Face adapter for DeepSeek-V3 (DeepseekV3ForCausalLM), dense part only: multi-head latent
attention + SwiGLU in every layer, i.e. config.json with first_k_dense_replace >= num_hidden_layers.
Checkpoints with MoE layers are refused until the MoE issue lands. Weight names are the same as
transformers' (our MLA module uses DeepSeek's names), so the table is a plain rename."""

from train.model.hf import llama
from train.model.hf.weights import Rule

MODEL_TYPE, ARCHITECTURE, FAMILY = "deepseek_v3", "DeepseekV3ForCausalLM", "deepseek_v3"

_MLA = ("q_proj", "q_a_proj", "q_a_layernorm", "q_b_proj", "kv_a_proj_with_mqa", "kv_a_layernorm", "kv_b_proj", "o_proj")
WEIGHTS = [
    Rule(("embed.weight",), "model.embed_tokens.weight"),
    Rule(("layers.{i}.mixer_norm.weight",), "model.layers.{i}.input_layernorm.weight"),
    *[Rule((f"layers.{{i}}.mixer.{p}.{w}",), f"model.layers.{{i}}.self_attn.{p}.{w}") for p in _MLA for w in ("weight", "bias")],
    Rule(("layers.{i}.ffn_norm.weight",), "model.layers.{i}.post_attention_layernorm.weight"),
    *[Rule((f"layers.{{i}}.ffn.{p}_proj.weight",), f"model.layers.{{i}}.mlp.{p}_proj.weight") for p in ("gate", "up", "down")],
    Rule(("final_norm.weight",), "model.norm.weight"),
    Rule(("output.weight",), "lm_head.weight"),
]
IGNORED = llama.IGNORED

LATENT_NORM_EPS = 1e-6  # transformers' DeepseekV3Attention builds q_a/kv_a_layernorm with the default eps


def config_from_hf(hf: dict) -> dict:
    num_layers = hf["num_hidden_layers"]
    first_dense = hf.get("first_k_dense_replace", 3)
    if first_dense < num_layers:
        raise ValueError(
            f"config.json has MoE layers (first_k_dense_replace={first_dense} < num_hidden_layers={num_layers}); "
            "only the dense part of DeepSeek-V3 is supported until mixture-of-experts lands"
        )
    if hf.get("num_key_value_heads", hf["num_attention_heads"]) != hf["num_attention_heads"]:
        raise ValueError("DeepSeek-V3 MLA with num_key_value_heads != num_attention_heads is not supported")
    base = llama.config_from_hf({**hf, "head_dim": hf["qk_rope_head_dim"]}, family=FAMILY)
    base["position"]["interleaved"] = hf.get("rope_interleave", True)
    base["mixers"] = {"mla": {"kind": "mla", "mla": {
        "num_heads": hf["num_attention_heads"],
        "q_lora_rank": hf.get("q_lora_rank"),
        "kv_lora_rank": hf["kv_lora_rank"],
        "qk_nope_head_dim": hf["qk_nope_head_dim"],
        "qk_rope_head_dim": hf["qk_rope_head_dim"],
        "v_head_dim": hf["v_head_dim"],
        "latent_norm_eps": LATENT_NORM_EPS,
        "bias": hf.get("attention_bias", False),
    }}}
    base["layer_mixers"] = ["mla"]
    base["ffns"]["swiglu"]["bias"] = False
    return base


def config_to_hf(config) -> dict:
    mla, ffn = config.layer_mixer(0).mla, config.layer_ffn(0)
    if mla is None:
        raise ValueError("the deepseek_v3 family needs mla mixers")
    hf_act = {ours: theirs for theirs, ours in llama.HF_ACTIVATIONS.items()}
    return {
        "architectures": [ARCHITECTURE],
        "model_type": MODEL_TYPE,
        "vocab_size": config.vocab_size,
        "hidden_size": config.dim,
        "intermediate_size": ffn.hidden_dim,
        "num_hidden_layers": config.num_layers,
        "first_k_dense_replace": config.num_layers,  # every layer dense: no MoE yet
        "num_attention_heads": mla.num_heads,
        "num_key_value_heads": mla.num_heads,
        "q_lora_rank": mla.q_lora_rank,
        "kv_lora_rank": mla.kv_lora_rank,
        "qk_nope_head_dim": mla.qk_nope_head_dim,
        "qk_rope_head_dim": mla.qk_rope_head_dim,
        "v_head_dim": mla.v_head_dim,
        "attention_bias": mla.bias,
        "hidden_act": hf_act.get(ffn.activation, ffn.activation),
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm.eps,
        "tie_word_embeddings": config.tie_embeddings,
        "rope_interleave": config.position.interleaved,
        "rope_parameters": llama.position_to_hf(config.position),
        "dtype": "float32",
    }
