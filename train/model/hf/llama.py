"""Hugging Face adapter for Llama (LlamaForCausalLM; Llama 3 and relatives).

Also holds what the Llama-like families share (mistral.py, mixtral.py, qwen2.py, qwen3.py extend it):
the weight table and the config mapping, parametrized by QK-norm, by where sliding windows come from
and by the attention biases of families that fix them instead of reading attention_bias.
"""

from train.model.hf.weights import Rule

MODEL_TYPE, ARCHITECTURE, FAMILY = "llama", "LlamaForCausalLM", "llama3"

WEIGHTS = [
    Rule(("embed.weight",), "model.embed_tokens.weight"),
    Rule(("layers.{i}.mixer_norm.weight",), "model.layers.{i}.input_layernorm.weight"),
    *[
        Rule((f"layers.{{i}}.mixer.{p}_proj.{w}",), f"model.layers.{{i}}.self_attn.{p}_proj.{w}")
        for p in "qkvo"
        for w in ("weight", "bias")
    ],
    Rule(("layers.{i}.ffn_norm.weight",), "model.layers.{i}.post_attention_layernorm.weight"),
    *[
        Rule((f"layers.{{i}}.ffn.{p}_proj.{w}",), f"model.layers.{{i}}.mlp.{p}_proj.{w}")
        for p in ("gate", "up", "down")
        for w in ("weight", "bias")
    ],
    Rule(("final_norm.weight",), "model.norm.weight"),
    Rule(("output.weight",), "lm_head.weight"),
]
IGNORED = (r"rotary_emb\.inv_freq$",)  # a buffer some old checkpoints saved

HF_ACTIVATIONS = {"silu": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu", "relu2": "relu2"}


def position_from_hf(hf: dict) -> dict:
    # transformers 5 writes rope_parameters; older config.json files have rope_theta + rope_scaling
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    position = {
        "kind": "rope",
        "theta": rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
        "rotary_fraction": rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)),
    }
    if rope_type == "yarn":
        position["kind"] = "yarn"
        position["yarn"] = {
            "factor": rope["factor"],
            "original_context": rope.get("original_max_position_embeddings", hf["max_position_embeddings"]),
            "beta_fast": rope.get("beta_fast") or 32.0,  # `or`: HF treats None/0 as the default
            "beta_slow": rope.get("beta_slow") or 1.0,
            "mscale": rope.get("mscale"),
            "mscale_all_dim": rope.get("mscale_all_dim"),
            "attention_factor": rope.get("attention_factor"),
            "truncate": rope.get("truncate", True),
        }
    elif rope_type in ("linear", "dynamic", "llama3"):  # position.scaling; transformers' ROPE_INIT_FUNCTIONS
        position["scaling"] = {"kind": rope_type, "factor": rope["factor"]}
        if rope_type == "dynamic":  # transformers scales against max_position_embeddings here
            position["scaling"]["original_context"] = hf["max_position_embeddings"]
        if rope_type == "llama3":
            position["scaling"].update(original_context=rope["original_max_position_embeddings"],
                                       low_freq_factor=rope["low_freq_factor"], high_freq_factor=rope["high_freq_factor"])
    elif rope_type != "default":
        raise ValueError(
            f"config.json rope_type={rope_type!r} is not supported; supported: default, yarn, linear, dynamic, llama3"
        )
    return position


def position_to_hf(position) -> dict:
    rope = {"rope_type": "default", "rope_theta": position.theta}
    if position.kind == "yarn":
        y = position.yarn
        rope.update(rope_type="yarn", factor=y.factor, original_max_position_embeddings=y.original_context,
                    beta_fast=y.beta_fast, beta_slow=y.beta_slow, truncate=y.truncate)
        rope.update({k: getattr(y, k) for k in ("mscale", "mscale_all_dim", "attention_factor") if getattr(y, k) is not None})
    elif position.scaling.kind != "none":  # dynamic's original context is max_position_embeddings (= max_seq_len)
        s = position.scaling
        rope.update(rope_type=s.kind, factor=s.factor)
        if s.kind == "llama3":
            rope.update(original_max_position_embeddings=s.original_context, low_freq_factor=s.low_freq_factor,
                        high_freq_factor=s.high_freq_factor)
    return rope


def config_from_hf(hf: dict, family: str = FAMILY, qk_norm: bool = False, windows: list | None = None,
                   attention_bias: tuple[bool, bool] | None = None) -> dict:
    """`windows`: the sliding window of each layer (None = full attention). `attention_bias`: the
    (q/k/v, o) biases of a family whose transformers code fixes them (Mistral none, Qwen2 q/k/v only);
    None reads config.json `attention_bias` (both or neither)."""
    num_layers, num_heads = hf["num_hidden_layers"], hf["num_attention_heads"]
    windows = windows or [None] * num_layers
    qkv_bias, out_bias = attention_bias or (hf.get("attention_bias", False),) * 2
    attention = {
        "num_heads": num_heads,
        "num_kv_heads": hf.get("num_key_value_heads") or num_heads,
        "head_dim": hf.get("head_dim") or hf["hidden_size"] // num_heads,
        "qk_norm": qk_norm,
        "qkv_bias": qkv_bias,
        "out_bias": out_bias,
    }
    names = ["full" if w is None else f"sliding{w}" for w in windows]
    mixers = {n: {"kind": "softmax_attention", "attention": {**attention, "window": w}} for n, w in zip(names, windows)}
    if hf.get("hidden_act", "silu") not in HF_ACTIVATIONS:
        raise ValueError(f"config.json hidden_act={hf['hidden_act']!r} is not supported; supported: {sorted(HF_ACTIVATIONS)}")
    return {
        "family": family,
        "vocab_size": hf["vocab_size"],
        "dim": hf["hidden_size"],
        "num_layers": num_layers,
        "max_seq_len": hf["max_position_embeddings"],
        "tie_embeddings": hf.get("tie_word_embeddings", False),
        "norm": {"kind": "rmsnorm", "eps": hf.get("rms_norm_eps", 1e-6)},
        "position": position_from_hf(hf),
        "mixers": mixers,
        "ffns": {"swiglu": {"kind": "glu", "hidden_dim": hf["intermediate_size"],
                            "activation": HF_ACTIVATIONS[hf.get("hidden_act", "silu")], "bias": hf.get("mlp_bias", False)}},
        "layer_mixers": names if len(set(names)) > 1 else names[:1],
        "layer_ffns": ["swiglu"],
    }


def config_to_hf(config, model_type: str = MODEL_TYPE, architecture: str = ARCHITECTURE, attn=None, ffn=None) -> dict:
    """The Llama-style config.json, from the first layer's attention and feed-forward unless given (hybrid
    families pass theirs). Features it cannot express are caught by the round-trip check in hf/__init__.py."""
    attn, ffn = attn or config.layer_mixer(0).attention, ffn or config.layer_ffn(0)
    hf_act = {ours: theirs for theirs, ours in HF_ACTIVATIONS.items()}
    return {
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.dim,
        "intermediate_size": ffn.hidden_dim,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": attn.num_heads,
        "num_key_value_heads": attn.num_kv_heads or attn.num_heads,
        "head_dim": attn.head_dim or config.dim // attn.num_heads,
        "hidden_act": hf_act.get(ffn.activation, ffn.activation),
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm.eps,
        "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": attn.qkv_bias,
        "mlp_bias": ffn.bias,
        "rope_parameters": position_to_hf(config.position),
        "dtype": "float32",
    }
