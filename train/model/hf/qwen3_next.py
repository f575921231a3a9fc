"""Hugging Face adapter for Qwen3-Next (Qwen3NextForCausalLM): in the layers `mlp_only_layers` /
`decoder_sparse_step` select, a softmax top-k router over `num_experts` SwiGLU experts plus one shared
expert gated by sigmoid(shared_expert_gate . x); dense SwiGLU elsewhere. Layer kinds come from `layer_types`
(linear_attention -> gated_deltanet, full_attention -> output-gated softmax attention); norms are
zero-centred (1 + w), which our RMSNorm's unit_offset reproduces, so weights map 1:1."""

from train.model.hf import llama
from train.model.hf.moe import get, expert_rules, glu_rules, layer_pattern, moe_config, qwen_moe_layers
from train.model.hf.weights import Rule

MODEL_TYPE, ARCHITECTURE, FAMILY = "qwen3_next", "Qwen3NextForCausalLM", "qwen3_next"

_GDN = ("in_proj_qkvz.weight", "in_proj_ba.weight", "conv1d.weight", "dt_bias", "A_log", "norm.weight", "out_proj.weight")
WEIGHTS = llama.WEIGHTS + [
    *[Rule((f"layers.{{i}}.mixer.{p}_norm.weight",), f"model.layers.{{i}}.self_attn.{p}_norm.weight") for p in "qk"],
    *[Rule((f"layers.{{i}}.mixer.{w}",), f"model.layers.{{i}}.linear_attn.{w}") for w in _GDN],
    Rule(("layers.{i}.ffn.router.gate.weight",), "model.layers.{i}.mlp.gate.weight"),
    *expert_rules("layers.{i}.ffn", "model.layers.{i}.mlp"),
    *glu_rules("layers.{i}.ffn.shared_expert", "model.layers.{i}.mlp.shared_expert"),
    Rule(("layers.{i}.ffn.shared_gate.weight",), "model.layers.{i}.mlp.shared_expert_gate.weight"),
]
IGNORED = llama.IGNORED + (r"^mtp\.",)  # multi-token-prediction weights of the released checkpoints
LAYER_KINDS = {"linear_attention": "linear", "full_attention": "full"}


def config_from_hf(hf: dict) -> dict:
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
    base["ffns"]["moe"] = {"kind": "moe", "activation": base["ffns"]["swiglu"]["activation"], "moe": {
        "num_experts": get(hf, "num_experts", "num_local_experts", default=512),
        "hidden_dim": hf.get("moe_intermediate_size", 512),
        "shared_hidden_dim": hf.get("shared_expert_intermediate_size", 512),
        "shared_gate": True,
        "router": {"kind": "softmax", "top_k": hf.get("num_experts_per_tok", 10), "renormalize": hf.get("norm_topk_prob", True)},
    }}
    moe = set(qwen_moe_layers(hf, default_experts=512))
    base["layer_ffns"] = layer_pattern(["moe" if i in moe else "swiglu" for i in range(hf["num_hidden_layers"])])
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
    ffns = [config.layer_ffn(i) for i in range(config.num_layers)]
    ffn = next((f for f in ffns if f.kind == "glu"), ffns[0])
    hf = llama.config_to_hf(config, MODEL_TYPE, ARCHITECTURE, attn=attn, ffn=ffn)
    hf["rope_parameters"] = {**hf["rope_parameters"], "partial_rotary_factor": config.position.rotary_fraction}
    hf.update(
        layer_types=[kinds[m.kind] for m in mixers],
        mlp_only_layers=[i for i, f in enumerate(ffns) if f.kind != "moe"],
        linear_num_key_heads=gdn.num_key_heads,
        linear_num_value_heads=gdn.num_value_heads,
        linear_key_head_dim=gdn.key_head_dim,
        linear_value_head_dim=gdn.value_head_dim,
        linear_conv_kernel_dim=gdn.conv_kernel,
    )
    if any(f.kind == "moe" for f in ffns):
        m = moe_config(config)[0].moe
        hf.update(num_experts=m.num_experts, moe_intermediate_size=m.hidden_dim, shared_expert_intermediate_size=m.shared_hidden_dim,
                  num_experts_per_tok=m.router.top_k, norm_topk_prob=m.router.renormalize, decoder_sparse_step=1)
    return hf
