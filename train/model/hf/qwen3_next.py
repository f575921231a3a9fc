"""Hugging Face adapter for Qwen3-Next (Qwen3NextForCausalLM) without MoE: every layer's MLP dense
(config.json `mlp_only_layers` covering all layers, or num_experts = 0); checkpoints with MoE
layers are refused until the MoE issue lands. Layer kinds come from `layer_types`
(linear_attention -> gated_deltanet, full_attention -> output-gated softmax attention); norms are
zero-centred (1 + w), which our RMSNorm's unit_offset reproduces, so weights map 1:1."""

from train.model.hf import llama
from train.model.hf.weights import Rule

MODEL_TYPE, ARCHITECTURE, FAMILY = "qwen3_next", "Qwen3NextForCausalLM", "qwen3_next"

_GDN = ("in_proj_qkvz.weight", "in_proj_ba.weight", "conv1d.weight", "dt_bias", "A_log", "norm.weight", "out_proj.weight")
WEIGHTS = llama.WEIGHTS + [
    *[Rule((f"layers.{{i}}.mixer.{p}_norm.weight",), f"model.layers.{{i}}.self_attn.{p}_norm.weight") for p in "qk"],
    *[Rule((f"layers.{{i}}.mixer.{w}",), f"model.layers.{{i}}.linear_attn.{w}") for w in _GDN],
]
IGNORED = llama.IGNORED + (r"^mtp\.",)  # multi-token-prediction weights of the released checkpoints
LAYER_KINDS = {"linear_attention": "linear", "full_attention": "full"}


def moe_layers(hf: dict) -> list[int]:
    """Layers transformers builds as Qwen3NextSparseMoeBlock (same rule as Qwen3NextDecoderLayer)."""
    dense = set(hf.get("mlp_only_layers") or [])
    experts, step = hf.get("num_experts", 512), hf.get("decoder_sparse_step", 1)
    return [i for i in range(hf["num_hidden_layers"]) if i not in dense and experts > 0 and (i + 1) % step == 0]


def config_from_hf(hf: dict) -> dict:
    if moe := moe_layers(hf):
        raise ValueError(f"config.json has MoE layers {moe[:8]}; only MoE-free Qwen3-Next (mlp_only_layers = all layers) "
                         "is supported until mixture-of-experts lands")
    base = llama.config_from_hf(hf, family=FAMILY, qk_norm=True)
    base["norm"]["unit_offset"] = True
    base["mixers"]["full"]["attention"]["output_gate"] = True
    base["mixers"]["linear"] = {"kind": "gated_deltanet", "gated_deltanet": {
        "num_key_heads": hf["linear_num_key_heads"],
        "num_value_heads": hf["linear_num_value_heads"],
        "key_head_dim": hf["linear_key_head_dim"],
        "value_head_dim": hf["linear_value_head_dim"],
        "conv_kernel": hf["linear_conv_kernel_dim"],
    }}
    layer_types = hf.get("layer_types") or ["linear_attention" if (i + 1) % 4 else "full_attention" for i in range(hf["num_hidden_layers"])]
    unknown = sorted(set(layer_types) - set(LAYER_KINDS))
    if unknown:
        raise ValueError(f"config.json layer_types {unknown} are not supported; supported: {sorted(LAYER_KINDS)}")
    base["layer_mixers"] = [LAYER_KINDS[t] for t in layer_types]
    base["ffns"]["swiglu"]["bias"] = False
    return base


def config_to_hf(config) -> dict:
    kinds = {"gated_deltanet": "linear_attention", "softmax_attention": "full_attention"}
    mixers = [config.layer_mixer(i) for i in range(config.num_layers)]
    if any(m.kind not in kinds for m in mixers):
        raise ValueError(f"Qwen3NextForCausalLM has only gated_deltanet and softmax_attention layers, not {sorted({m.kind for m in mixers} - set(kinds))}")
    attn = next((m.attention for m in mixers if m.kind == "softmax_attention"), None)
    gdn = next((m.gated_deltanet for m in mixers if m.kind == "gated_deltanet"), None)
    if attn is None or gdn is None:
        raise ValueError("Qwen3NextForCausalLM export needs at least one gated_deltanet and one softmax_attention layer")
    ffn = config.layer_ffn(0)
    hf_act = {ours: theirs for theirs, ours in llama.HF_ACTIVATIONS.items()}
    rope = {**llama.position_to_hf(config.position), "partial_rotary_factor": config.position.rotary_fraction}
    hf = {
        "architectures": [ARCHITECTURE],
        "model_type": MODEL_TYPE,
        "vocab_size": config.vocab_size,
        "hidden_size": config.dim,
        "intermediate_size": ffn.hidden_dim,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": attn.num_heads,
        "num_key_value_heads": attn.num_kv_heads or attn.num_heads,
        "head_dim": attn.head_dim or config.dim // attn.num_heads,
        "attention_bias": attn.qkv_bias,
        "hidden_act": hf_act.get(ffn.activation, ffn.activation),
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm.eps,
        "tie_word_embeddings": config.tie_embeddings,
        "rope_parameters": rope,
        "dtype": "float32",
    }
    hf.update(
        layer_types=[kinds[m.kind] for m in mixers],
        mlp_only_layers=list(range(config.num_layers)),  # every layer dense: no MoE yet
        linear_num_key_heads=gdn.num_key_heads,
        linear_num_value_heads=gdn.num_value_heads,
        linear_key_head_dim=gdn.key_head_dim,
        linear_value_head_dim=gdn.value_head_dim,
        linear_conv_kernel_dim=gdn.conv_kernel,
    )
    return hf
