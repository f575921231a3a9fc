"""Hugging Face adapter for GPT-2 (GPT2LMHeadModel): Conv1D weights stored [in, out] and a fused
q/k/v projection `c_attn`."""

from train.model.hf.weights import Rule

MODEL_TYPE, ARCHITECTURE, FAMILY = "gpt2", "GPT2LMHeadModel", "gpt2"

_qkv = tuple(f"layers.{{i}}.mixer.{p}_proj" for p in "qkv")
WEIGHTS = [
    Rule(("embed.weight",), "transformer.wte.weight"),
    Rule(("position.weight",), "transformer.wpe.weight"),
    *[Rule((f"layers.{{i}}.mixer_norm.{w}",), f"transformer.h.{{i}}.ln_1.{w}") for w in ("weight", "bias")],
    Rule(tuple(f"{p}.weight" for p in _qkv), "transformer.h.{i}.attn.c_attn.weight", transpose=True),
    Rule(tuple(f"{p}.bias" for p in _qkv), "transformer.h.{i}.attn.c_attn.bias"),
    Rule(("layers.{i}.mixer.o_proj.weight",), "transformer.h.{i}.attn.c_proj.weight", transpose=True),
    Rule(("layers.{i}.mixer.o_proj.bias",), "transformer.h.{i}.attn.c_proj.bias"),
    *[Rule((f"layers.{{i}}.ffn_norm.{w}",), f"transformer.h.{{i}}.ln_2.{w}") for w in ("weight", "bias")],
    Rule(("layers.{i}.ffn.up_proj.weight",), "transformer.h.{i}.mlp.c_fc.weight", transpose=True),
    Rule(("layers.{i}.ffn.up_proj.bias",), "transformer.h.{i}.mlp.c_fc.bias"),
    Rule(("layers.{i}.ffn.down_proj.weight",), "transformer.h.{i}.mlp.c_proj.weight", transpose=True),
    Rule(("layers.{i}.ffn.down_proj.bias",), "transformer.h.{i}.mlp.c_proj.bias"),
    *[Rule((f"final_norm.{w}",), f"transformer.ln_f.{w}") for w in ("weight", "bias")],
]
IGNORED = (r"\.attn\.(masked_)?bias$", r"^lm_head\.weight$")  # causal-mask buffers; the tied head

HF_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}


def config_from_hf(hf: dict) -> dict:
    if hf.get("activation_function", "gelu_new") not in HF_ACTIVATIONS:
        raise ValueError(f"config.json activation_function={hf['activation_function']!r} is not supported; "
                         f"supported: {sorted(HF_ACTIVATIONS)}")
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn") or not hf.get("scale_attn_weights", True):
        raise ValueError("config.json GPT-2 attention-scaling variants are not supported")
    dim = hf["n_embd"]
    return {
        "family": FAMILY,
        "vocab_size": hf["vocab_size"],
        "dim": dim,
        "num_layers": hf["n_layer"],
        "max_seq_len": hf["n_positions"],
        "tie_embeddings": hf.get("tie_word_embeddings", True),
        "norm": {"kind": "layernorm", "eps": hf.get("layer_norm_epsilon", 1e-5), "bias": True},
        "position": {"kind": "learned"},
        "mixers": {"full": {"kind": "softmax_attention",
                            "attention": {"num_heads": hf["n_head"], "qkv_bias": True, "out_bias": True}}},
        "ffns": {"mlp": {"kind": "mlp", "hidden_dim": hf.get("n_inner") or 4 * dim,
                         "activation": HF_ACTIVATIONS[hf.get("activation_function", "gelu_new")], "bias": True}},
        "layer_mixers": ["full"],
        "layer_ffns": ["mlp"],
    }


def config_to_hf(config) -> dict:
    ffn = config.layer_ffn(0)
    return {
        "architectures": [ARCHITECTURE],
        "model_type": MODEL_TYPE,
        "vocab_size": config.vocab_size,
        "n_embd": config.dim,
        "n_layer": config.num_layers,
        "n_head": config.layer_mixer(0).attention.num_heads,
        "n_positions": config.max_seq_len,
        "n_inner": ffn.hidden_dim,
        "activation_function": {"gelu_tanh": "gelu_new"}.get(ffn.activation, ffn.activation),
        "layer_norm_epsilon": config.norm.eps,
        "tie_word_embeddings": config.tie_embeddings,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "dtype": "float32",
    }
