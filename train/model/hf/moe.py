"""What the Hugging Face MoE adapters share: per-expert weight rules (transformers saves each routed
expert as experts.{e}.gate_proj/up_proj/down_proj, Mixtral's as experts.{e}.w1/w3/w2, which stack
into our [E, ...] tensors), the
Qwen-style choice of MoE layers, and the per-layer feed-forward pattern."""

from train.model.hf.weights import Rule

_EXPERT_WEIGHTS = ("w1_EFD", "w3_EFD", "w2_EDF")  # gate, up, down


def expert_rules(ours: str, hf: str, names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")) -> list[Rule]:
    """ours/hf: the MoE module's prefix, e.g. "layers.{i}.ffn" / "model.layers.{i}.mlp"; names: HF's
    gate, up and down projections (Mixtral: w1, w3, w2)."""
    return [Rule((f"{ours}.experts.{w}",), f"{hf}.experts.{{e}}.{n}.weight") for w, n in zip(_EXPERT_WEIGHTS, names)]


def glu_rules(ours: str, hf: str) -> list[Rule]:
    return [Rule((f"{ours}.{p}_proj.weight",), f"{hf}.{p}_proj.weight") for p in ("gate", "up", "down")]


def get(hf: dict, *keys: str, default=None):
    """The first of `keys` in config.json: transformers writes attribute_map aliases
    (num_local_experts for num_experts, ...) under either name."""
    return next((hf[k] for k in keys if k in hf), default)


def qwen_moe_layers(hf: dict, default_experts: int) -> list[int]:
    """Layers transformers builds as sparse MoE blocks in Qwen2/3-MoE and Qwen3-Next."""
    dense = set(hf.get("mlp_only_layers") or [])
    experts, step = get(hf, "num_experts", "num_local_experts", default=default_experts), hf.get("decoder_sparse_step", 1)
    return [i for i in range(hf["num_hidden_layers"]) if i not in dense and experts > 0 and (i + 1) % step == 0]


def layer_pattern(names: list[str]) -> list[str]:
    """A per-layer list, shortened to one entry when every layer is the same."""
    return names if len(set(names)) > 1 else names[:1]


def moe_config(config) -> tuple:
    """(the first MoE feed-forward config, the first dense one or None) of a model config."""
    ffns = [config.layer_ffn(i) for i in range(config.num_sublayers())]
    if config.shortcut_moe is not None:
        ffns.append(config.ffns[config.shortcut_moe])
    moe = next((f for f in ffns if f.kind == "moe"), None)
    if moe is None:
        raise ValueError(f"model.family={config.family!r} exports mixture-of-experts models; this one has no moe feed-forward")
    return moe, next((f for f in ffns if f.kind == "glu"), None)
