"""Hugging Face adapter for Mamba-2 (Mamba2ForCausalLM): blocks of RMSNorm + Mamba2 mixer, no
feed-forward, no positions. Mixer weight names are transformers' (in_proj, conv1d, dt_bias, A_log,
D, norm, out_proj); config.json has no context length, so max_seq_len travels as an extra key."""

from train.model.hf.weights import Rule

MODEL_TYPE, ARCHITECTURE, FAMILY = "mamba2", "Mamba2ForCausalLM", "mamba2"

_MIXER = ("in_proj.weight", "in_proj.bias", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "D", "norm.weight",
          "out_proj.weight", "out_proj.bias")
WEIGHTS = [
    Rule(("embed.weight",), "backbone.embeddings.weight"),
    Rule(("layers.{i}.mixer_norm.weight",), "backbone.layers.{i}.norm.weight"),
    *[Rule((f"layers.{{i}}.mixer.{w}",), f"backbone.layers.{{i}}.mixer.{w}") for w in _MIXER],
    Rule(("final_norm.weight",), "backbone.norm_f.weight"),
    Rule(("output.weight",), "lm_head.weight"),
]
IGNORED = ()


def _float(value) -> float:
    """transformers writes inf in config.json as {"__float__": "Infinity"}."""
    return float(value["__float__"]) if isinstance(value, dict) else float(value)


def config_from_hf(hf: dict) -> dict:
    hidden, heads, head_dim = hf["hidden_size"], hf["num_heads"], hf["head_dim"]
    if heads * head_dim != int(hf.get("expand", 2) * hidden):
        raise ValueError(f"config.json num_heads * head_dim = {heads * head_dim} != expand * hidden_size = {hf.get('expand', 2) * hidden}")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"config.json hidden_act={hf['hidden_act']!r} is not supported; Mamba2 here uses silu")
    limit = hf.get("time_step_limit") or (0.0, float("inf"))
    return {
        "family": FAMILY,
        "vocab_size": hf["vocab_size"],
        "dim": hidden,
        "num_layers": hf["num_hidden_layers"],
        "max_seq_len": hf.get("max_position_embeddings", 2048),
        "tie_embeddings": hf.get("tie_word_embeddings", False),
        "norm": {"kind": "rmsnorm", "eps": hf.get("layer_norm_epsilon", 1e-5)},
        "position": {"kind": "none"},
        "mixers": {"ssm": {"kind": "mamba2", "mamba2": {
            "num_heads": heads, "head_dim": head_dim, "state_size": hf["state_size"], "num_groups": hf.get("n_groups", 1),
            "conv_kernel": hf.get("conv_kernel", 4), "conv_bias": hf.get("use_conv_bias", True), "bias": hf.get("use_bias", False),
            "chunk_size": hf.get("chunk_size", 256), "dt_min": hf.get("time_step_min", 0.001), "dt_max": hf.get("time_step_max", 0.1),
            "dt_floor": hf.get("time_step_floor", 1e-4), "dt_limit_min": _float(limit[0]), "dt_limit_max": _float(limit[1]),
        }}},
        "ffns": {"none": {"kind": "none"}},
        "layer_mixers": ["ssm"],
        "layer_ffns": ["none"],
    }


def config_to_hf(config) -> dict:
    m = config.layer_mixer(0).mamba2
    if m is None:
        raise ValueError("the mamba2 family needs mamba2 mixers")
    inner = m.num_heads * m.head_dim
    if inner % config.dim:
        raise ValueError(f"Mamba2Config needs an integer expand: num_heads * head_dim = {inner} is not a multiple of dim = {config.dim}")
    return {
        "architectures": [ARCHITECTURE],
        "model_type": MODEL_TYPE,
        "vocab_size": config.vocab_size,
        "hidden_size": config.dim,
        "num_hidden_layers": config.num_layers,
        "num_heads": m.num_heads,
        "head_dim": m.head_dim,
        "expand": inner // config.dim,
        "state_size": m.state_size,
        "n_groups": m.num_groups,
        "conv_kernel": m.conv_kernel,
        "use_conv_bias": m.conv_bias,
        "use_bias": m.bias,
        "chunk_size": m.chunk_size,
        "hidden_act": "silu",
        "layer_norm_epsilon": config.norm.eps,
        "tie_word_embeddings": config.tie_embeddings,
        "time_step_min": m.dt_min,
        "time_step_max": m.dt_max,
        "time_step_floor": m.dt_floor,
        "time_step_limit": [m.dt_limit_min, m.dt_limit_max],  # json writes inf as Infinity, which json reads back
        "max_position_embeddings": config.max_seq_len,
        "residual_in_fp32": True,
        "dtype": "float32",
    }
