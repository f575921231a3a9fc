"""Hugging Face adapter for Gemma 3 text models (Gemma3ForCausalLM, model_type gemma3_text; Gemma Team
2025, arXiv 2503.19786). Llama-like with:
- sandwich norms, x + post_norm(f(norm(x))) around attention and MLP (Gemma 2, arXiv 2408.00118 sec. 2),
  every RMSNorm scaling by (1 + weight), and per-head QK-norm (Gemma 3 sec. 2);
- token embeddings times sqrt(hidden_size); a GELU-tanh GLU MLP; softmax scale query_pre_attn_scalar^-1/2;
- local sliding-window layers and global layers (`layer_types`, 5:1) with their own rope bases:
  rope_parameters.sliding_attention (rope_local_base_freq, 10000) and .full_attention (rope_theta, 1e6,
  plus any rope scaling, which Gemma 3 applies to global layers only);
- final_logit_softcapping on the output logits where set.
transformers' Gemma3Attention does not apply attn_logit_softcapping (Gemma 3 replaced Gemma 2's attention
soft-capping by QK-norm), so neither does an imported model.
"""

from train.model.hf import llama, qwen3
from train.model.hf.weights import Rule

MODEL_TYPE, ARCHITECTURE, FAMILY = "gemma3_text", "Gemma3ForCausalLM", "gemma3"

_PRE_NORMS = ("layers.{i}.mixer_norm.weight", "layers.{i}.ffn_norm.weight")  # named differently in Llama
WEIGHTS = [rule for rule in qwen3.WEIGHTS if rule.ours[0] not in _PRE_NORMS] + [
    Rule(("layers.{i}.mixer_norm.weight",), "model.layers.{i}.input_layernorm.weight"),
    Rule(("layers.{i}.mixer_post_norm.weight",), "model.layers.{i}.post_attention_layernorm.weight"),
    Rule(("layers.{i}.ffn_norm.weight",), "model.layers.{i}.pre_feedforward_layernorm.weight"),
    Rule(("layers.{i}.ffn_post_norm.weight",), "model.layers.{i}.post_feedforward_layernorm.weight"),
]
IGNORED = llama.IGNORED

DEFAULT_GLOBAL_THETA, DEFAULT_LOCAL_THETA = 1_000_000.0, 10_000.0  # Gemma3TextConfig.default_theta


def _rope_parameters(hf: dict) -> tuple[dict, dict]:
    """(global, local) rope parameters. transformers 5 writes rope_parameters per layer type; older
    config.json files have rope_theta + rope_scaling (global layers) and rope_local_base_freq."""
    rope = hf.get("rope_parameters") or {}
    if "full_attention" in rope or "sliding_attention" in rope:
        full = rope.get("full_attention") or {"rope_type": "default", "rope_theta": DEFAULT_GLOBAL_THETA}
        sliding = rope.get("sliding_attention") or {"rope_type": "default", "rope_theta": DEFAULT_LOCAL_THETA}
        return full, sliding
    full = {**(hf.get("rope_scaling") or {}), "rope_theta": hf.get("rope_theta", DEFAULT_GLOBAL_THETA)}
    return full, {"rope_type": "default", "rope_theta": hf.get("rope_local_base_freq", DEFAULT_LOCAL_THETA)}


def config_from_hf(hf: dict) -> dict:
    if hf.get("use_bidirectional_attention"):
        raise ValueError("config.json use_bidirectional_attention=true (Gemma 3 as an encoder) is not supported; "
                         "only causal Gemma 3 models load")
    num_layers = hf["num_hidden_layers"]
    pattern = hf.get("sliding_window_pattern") or hf.get("_sliding_window_pattern") or 6
    layer_types = hf.get("layer_types") or [
        "sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(num_layers)]
    window = hf.get("sliding_window", 4096)
    full, sliding = _rope_parameters(hf)
    max_len = hf.get("max_position_embeddings", 131_072)
    activation = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
    config = llama.config_from_hf({**hf, "hidden_act": activation, "rope_parameters": full, "rope_scaling": None,
                                   "max_position_embeddings": max_len},
                                  family=FAMILY, qk_norm=True,
                                  windows=[window if t == "sliding_attention" else None for t in layer_types])
    local_position = llama.position_from_hf({"rope_parameters": sliding, "max_position_embeddings": max_len})
    for mixer in config["mixers"].values():
        attention = mixer["attention"]
        attention["scale_dim"] = float(hf.get("query_pre_attn_scalar", 256))
        if attention["window"] is not None:
            attention["position"] = local_position
    hidden = hf["hidden_size"]
    config.update(
        tie_embeddings=hf.get("tie_word_embeddings", True),
        norm={"kind": "rmsnorm", "eps": hf.get("rms_norm_eps", 1e-6), "unit_offset": True},
        norm_placement="sandwich",
        embedding_scale=hidden**0.5,
        final_softcap=hf.get("final_logit_softcapping"),
    )
    return config


def config_to_hf(config) -> dict:
    """Everything the round-trip check in hf/__init__.py compares comes back through config_from_hf: one
    window for all local layers, one rope for the global and one for the local layers, one attention scale."""
    layers = [config.layer_mixer(i).attention for i in range(config.num_layers)]
    local = [a for a in layers if a.window is not None]
    hf = llama.config_to_hf(config, MODEL_TYPE, ARCHITECTURE)
    for key in ("hidden_act", "mlp_bias"):  # Gemma 3 names the activation hidden_activation and has no MLP bias
        del hf[key]
    hf_act = {ours: theirs for theirs, ours in llama.HF_ACTIVATIONS.items()}
    local_position = (local[0].position if local else None) or config.position
    scale_dim = layers[0].scale_dim or layers[0].head_dim or config.dim // layers[0].num_heads
    hf.update(
        hidden_activation=hf_act.get(config.layer_ffn(0).activation, config.layer_ffn(0).activation),
        query_pre_attn_scalar=int(scale_dim) if scale_dim == int(scale_dim) else scale_dim,  # an int in transformers
        sliding_window=local[0].window if local else None,
        layer_types=["full_attention" if a.window is None else "sliding_attention" for a in layers],
        rope_parameters={"full_attention": llama.position_to_hf(config.position),
                         "sliding_attention": llama.position_to_hf(local_position)},
        final_logit_softcapping=config.final_softcap,
        attn_logit_softcapping=None,
        use_bidirectional_attention=False,
    )
    return hf
