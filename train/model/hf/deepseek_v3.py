"""Hugging Face adapter for DeepSeek-V3 (DeepseekV3ForCausalLM; also Kimi K2, which uses the same
architecture): multi-head latent attention in every layer, dense SwiGLU in the first
`first_k_dense_replace` layers, then DeepSeekMoE: a sigmoid router with group-limited top-k
(`n_group`, `topk_group`), renormalised and scaled (`routed_scaling_factor`) weights, the
auxiliary-loss-free `e_score_correction_bias`, `n_routed_experts` routed experts and
`n_shared_experts` always-on experts (one GLU of n_shared_experts * moe_intermediate_size). Weight
names are the same as transformers' (our MLA module uses DeepSeek's names).

Multi-token prediction (`model.mtp`): DeepSeek's checkpoints hold MTP module k as model.layers.{61 + k}
(enorm, hnorm, eh_proj, shared_head.norm and a decoder layer, plus copies of the embedding and head, which
are shared here and skipped). transformers' DeepseekV3ForCausalLM has no MTP modules (it ignores those
weights on load); its MtpModel (modeling_layers.py, `generate(use_mtp=True)`) reads them from the same
names, counted by num_nextn_predict_layers. Export writes them there; import reads them when the folder
has them (transformers' own save_pretrained writes none, though its config counts one)."""

from train.model.hf import llama
from train.model.hf.moe import expert_rules, glu_rules, layer_pattern, moe_config
from train.model.hf.weights import Rule

MODEL_TYPE, ARCHITECTURE, FAMILY = "deepseek_v3", "DeepseekV3ForCausalLM", "deepseek_v3"

MLA_WEIGHTS = ("q_proj", "q_a_proj", "q_a_layernorm", "q_b_proj", "kv_a_proj_with_mqa", "kv_a_layernorm", "kv_b_proj", "o_proj")
WEIGHTS = [
    Rule(("embed.weight",), "model.embed_tokens.weight"),
    Rule(("layers.{i}.mixer_norm.weight",), "model.layers.{i}.input_layernorm.weight"),
    *[Rule((f"layers.{{i}}.mixer.{p}.{w}",), f"model.layers.{{i}}.self_attn.{p}.{w}") for p in MLA_WEIGHTS for w in ("weight", "bias")],
    Rule(("layers.{i}.ffn_norm.weight",), "model.layers.{i}.post_attention_layernorm.weight"),
    *glu_rules("layers.{i}.ffn", "model.layers.{i}.mlp"),
    Rule(("layers.{i}.ffn.router.gate.weight",), "model.layers.{i}.mlp.gate.weight"),
    Rule(("layers.{i}.ffn.router.score_correction_bias",), "model.layers.{i}.mlp.gate.e_score_correction_bias"),
    *glu_rules("layers.{i}.ffn.shared_expert", "model.layers.{i}.mlp.shared_experts"),
    *expert_rules("layers.{i}.ffn", "model.layers.{i}.mlp"),
    Rule(("final_norm.weight",), "model.norm.weight"),
    Rule(("output.weight",), "lm_head.weight"),
]
LAYER_WEIGHTS = [rule for rule in WEIGHTS if rule.ours[0].startswith("layers.{i}.")]
MTP_WEIGHTS = [  # module m is HF layer n = num_layers + m: its own norms and projection, then a decoder layer
    Rule(("mtp.{m}.enorm.weight",), "model.layers.{n}.enorm.weight"),
    Rule(("mtp.{m}.hnorm.weight",), "model.layers.{n}.hnorm.weight"),
    Rule(("mtp.{m}.eh_proj.weight",), "model.layers.{n}.eh_proj.weight"),
    Rule(("mtp.{m}.head_norm.weight",), "model.layers.{n}.shared_head.norm.weight"),
    *[Rule(tuple(o.replace("layers.{i}.", "mtp.{m}.block.") for o in rule.ours),
           rule.hf.replace("model.layers.{i}.", "model.layers.{n}."), rule.transpose, rule.interleave)
      for rule in LAYER_WEIGHTS],
]
WEIGHTS = WEIGHTS + MTP_WEIGHTS
# the MTP layers' copies of the shared embedding and output head
IGNORED = llama.IGNORED + (r"^model\.layers\.\d+\.(embed_tokens|shared_head\.head)\.weight$",)

LATENT_NORM_EPS = 1e-6  # transformers' DeepseekV3Attention builds q_a/kv_a_layernorm with the default eps


def mla_from_hf(hf: dict, **extra) -> dict:
    return {"kind": "mla", "mla": {
        "num_heads": hf["num_attention_heads"],
        "q_lora_rank": hf.get("q_lora_rank"),
        "kv_lora_rank": hf["kv_lora_rank"],
        "qk_nope_head_dim": hf["qk_nope_head_dim"],
        "qk_rope_head_dim": hf["qk_rope_head_dim"],
        "v_head_dim": hf["v_head_dim"],
        "latent_norm_eps": LATENT_NORM_EPS,
        "bias": hf.get("attention_bias", False),
        **extra,
    }}


def config_from_hf(hf: dict) -> dict:
    if hf.get("num_key_value_heads", hf["num_attention_heads"]) != hf["num_attention_heads"]:
        raise ValueError("DeepSeek-V3 MLA with num_key_value_heads != num_attention_heads is not supported")
    num_layers = hf["num_hidden_layers"]
    base = llama.config_from_hf({**hf, "head_dim": hf["qk_rope_head_dim"]}, family=FAMILY)
    base["position"]["interleaved"] = hf.get("rope_interleave", True)
    base["mixers"] = {"mla": mla_from_hf(hf)}
    base["layer_mixers"] = ["mla"]
    base["ffns"]["swiglu"]["bias"] = False
    expert_dim = hf.get("moe_intermediate_size", 2048)
    base["ffns"]["moe"] = {"kind": "moe", "activation": base["ffns"]["swiglu"]["activation"], "moe": {
        "num_experts": hf.get("n_routed_experts", 256),
        "hidden_dim": expert_dim,
        "shared_hidden_dim": hf.get("n_shared_experts", 1) * expert_dim,
        "router": {"kind": "sigmoid", "top_k": hf.get("num_experts_per_tok", 8), "renormalize": hf.get("norm_topk_prob", True),
                   "scaling_factor": hf.get("routed_scaling_factor", 2.5), "num_groups": hf.get("n_group", 8),
                   "topk_groups": hf.get("topk_group", 4), "score_correction_bias": True},
    }}
    first_dense = min(hf.get("first_k_dense_replace", 3), num_layers)
    base["layer_ffns"] = layer_pattern(["swiglu"] * first_dense + ["moe"] * (num_layers - first_dense))
    base["mtp"] = {"depth": hf.get("num_nextn_predict_layers", 0)}
    return base


def config_for_weights(config, names) -> object:
    """The MTP depth the folder's weights hold (config.json counts num_nextn_predict_layers modules even where,
    as in transformers' save_pretrained, none was saved)."""
    depth = 0
    while depth < config.mtp.depth and f"model.layers.{config.num_layers + depth}.eh_proj.weight" in names:
        depth += 1
    config.mtp.depth = depth
    return config


def config_to_hf(config) -> dict:
    mla = config.layer_mixer(0).mla
    if mla is None:
        raise ValueError("the deepseek_v3 family needs mla mixers")
    kinds = [config.layer_ffn(i).kind for i in range(config.num_layers)]
    first_dense = kinds.index("moe") if "moe" in kinds else config.num_layers
    hf_act = {ours: theirs for theirs, ours in llama.HF_ACTIVATIONS.items()}
    dense = next((config.layer_ffn(i) for i in range(first_dense)), None)
    hf = {
        "architectures": [ARCHITECTURE],
        "model_type": MODEL_TYPE,
        "vocab_size": config.vocab_size,
        "hidden_size": config.dim,
        "num_hidden_layers": config.num_layers,
        "first_k_dense_replace": first_dense,
        "num_attention_heads": mla.num_heads,
        "num_key_value_heads": mla.num_heads,
        "q_lora_rank": mla.q_lora_rank,
        "kv_lora_rank": mla.kv_lora_rank,
        "qk_nope_head_dim": mla.qk_nope_head_dim,
        "qk_rope_head_dim": mla.qk_rope_head_dim,
        "v_head_dim": mla.v_head_dim,
        "attention_bias": mla.bias,
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm.eps,
        "tie_word_embeddings": config.tie_embeddings,
        "rope_interleave": config.position.interleaved,
        "rope_parameters": llama.position_to_hf(config.position),
        "dtype": "float32",
    }
    ffn = dense
    if first_dense < config.num_layers:
        moe_ffn, _ = moe_config(config)
        ffn = ffn or moe_ffn
        m, r = moe_ffn.moe, moe_ffn.moe.router
        hf.update(n_routed_experts=m.num_experts, moe_intermediate_size=m.hidden_dim,
                  n_shared_experts=m.shared_hidden_dim // m.hidden_dim, num_experts_per_tok=r.top_k,
                  norm_topk_prob=r.renormalize, routed_scaling_factor=r.scaling_factor, n_group=r.num_groups,
                  topk_group=r.topk_groups)
    hf.update(intermediate_size=ffn.hidden_dim, hidden_act=hf_act.get(ffn.activation, ffn.activation))
    if config.mtp.depth and kinds[-1] != "moe":
        raise ValueError("the deepseek_v3 family's MTP modules are MoE blocks (transformers' MtpModel builds them so): "
                         "model.mtp needs an moe feed-forward in the last layer")
    hf["num_nextn_predict_layers"] = config.mtp.depth
    return hf
