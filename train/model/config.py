"""Model configuration: plain dataclasses, registered in Hydra's ConfigStore.

A model is `num_layers` blocks, pre-norm unless `norm_placement` says sandwich (Gemma) or
post_sublayer (OLMo 2). Each block has a token mixer and a feed-forward, picked
by name from the `mixers` and `ffns` tables through the per-layer patterns `layer_mixers` and
`layer_ffns` (cycled to `num_layers`; a list of length `num_layers` names every layer). A mixer or
feed-forward config has a `kind` (a name in train/model/registry.py) plus an optional sub-config
per kind, because OmegaConf has no Union types: `attention`, `mla`, `linear_attention`,
`gated_deltanet`, `mamba2`, `parallel_hybrid` sit side by side, and a feed-forward of kind `moe` has
its `moe` section; a feed-forward of kind `none` drops the FFN sublayer (Mamba2). `shortcut_moe`
names an MoE feed-forward that LongCat-Flash runs beside each pair of sublayers.

The YAML presets in configs/model/ are the one source of truth for sizes; `load_preset` composes
them with Hydra so `build_model("llama3_tiny")` and `python -m train.inspect model=llama3_tiny`
read the same files.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from common.compose import compose
from common.paths import CONFIGS_DIR


@dataclass
class YarnConfig:
    """YaRN context extension (Peng et al. 2023, arXiv 2309.00071); field names follow the paper."""

    factor: float = 1.0  # s: new context / original context
    original_context: int = 4096  # L: the pre-training context length
    beta_fast: float = 32.0  # alpha/beta of the ramp, in rotations over L
    beta_slow: float = 1.0
    mscale: Optional[float] = None  # DeepSeek-style attention factor: mscale(s, mscale) / mscale(s, mscale_all_dim)
    mscale_all_dim: Optional[float] = None
    attention_factor: Optional[float] = None  # explicit sqrt(1/t); default 0.1 ln(s) + 1
    truncate: bool = True  # round the ramp bounds to whole dimensions, as the reference code does


@dataclass
class RopeScalingConfig:
    """Rescaled rope frequencies for a longer context (position.kind == rope); Hugging Face's rope_type.
    linear: Position Interpolation (Chen et al. 2023, arXiv 2306.15595), every frequency / factor;
    dynamic: NTK-aware base scaling that grows with the sequence (position/dynamic_ntk.py);
    llama3: Meta's Llama 3.1 per-frequency interpolation (position/llama3.py)."""

    kind: str = "none"  # none | linear | dynamic | llama3
    factor: float = 1.0  # s: new context / original context
    original_context: int = 8192  # L: the pre-training context (dynamic, llama3)
    low_freq_factor: float = 1.0  # llama3: wavelengths above L / low_freq_factor are interpolated by s
    high_freq_factor: float = 4.0  # llama3: wavelengths below L / high_freq_factor are kept


@dataclass
class PositionConfig:
    kind: str = "rope"  # none | sinusoidal | learned | rope | yarn
    theta: float = 10000.0  # rope/yarn base
    rotary_fraction: float = 1.0  # partial rotary: rotate only the first fraction of each head's dims
    interleaved: bool = False  # rotate pairs (0,1),(2,3)... (GPT-J/RoFormer) instead of halves (GPT-NeoX/HF)
    yarn: YarnConfig = field(default_factory=YarnConfig)  # used when kind == yarn
    scaling: RopeScalingConfig = field(default_factory=RopeScalingConfig)  # used when kind == rope


@dataclass
class NormConfig:
    kind: str = "rmsnorm"  # rmsnorm | layernorm | dyt (Dynamic Tanh: weight * tanh(alpha x) + bias, arXiv 2503.10622)
    eps: float = 1e-5
    bias: bool = False  # layernorm only (dyt always has its bias)
    unit_offset: bool = False  # rmsnorm scales by (1 + weight), weight initialised to 0 (Gemma, Qwen3-Next)
    dyt_alpha: float = 0.5  # dyt: initial value of the learned scalar alpha (the paper's alpha_0)


@dataclass
class AttentionConfig:
    num_heads: int = 8
    num_kv_heads: Optional[int] = None  # None = num_heads (MHA); 1 = MQA; in between = GQA
    head_dim: Optional[int] = None  # None = dim // num_heads
    qk_norm: bool = False  # norm of q and k before rope (Qwen3, Gemma 3, OLMo 2), over qk_norm_over
    # head: each head of q and k over head_dim (Qwen3; Gemma 3); all: q over num_heads * head_dim and k
    # over num_kv_heads * head_dim, the whole projection (OLMo 2, arXiv 2501.00656 sec. 3.3.1)
    qk_norm_over: str = "head"  # head | all
    qkv_bias: bool = False
    out_bias: bool = False
    window: Optional[int] = None  # sliding window: a query sees itself and the window-1 tokens before it
    sinks: bool = False  # learned per-head sink logit in the softmax denominator (GPT-OSS)
    output_gate: bool = False  # Qwen3-Next: q_proj also emits a per-head gate g, output = attn * sigmoid(g)
    # softmax scale = scale_dim^-1/2; None = head_dim (Gemma 2/3's query_pre_attn_scalar)
    scale_dim: Optional[float] = None
    # logit soft-capping, scores = softcap * tanh(scores / softcap) before the mask and softmax (Gemma 2,
    # arXiv 2408.00118 sec. 2); SDPA cannot do it, so the dense backend computes the scores explicitly
    softcap: Optional[float] = None
    # this mixer's own rotary positions instead of model.position (Gemma 3's local layers use base 10000,
    # the global ones 1e6: arXiv 2503.19786 sec. 2); kind none drops rope in this mixer
    position: Optional[PositionConfig] = None


@dataclass
class MLAConfig:
    """Multi-head latent attention (DeepSeek-V2, arXiv 2405.04434, sec. 2.1; DeepSeek-V3). Keys and
    values are decompressed from one per-token latent of kv_lora_rank dims; the position enters
    through a separate rope key of qk_rope_head_dim dims shared by all heads. Only these two are cached."""

    num_heads: int = 8
    q_lora_rank: Optional[int] = None  # None: q = W_q x; else q = W_qb norm(W_qa x) (V2-Lite has none)
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 128  # per-head key/query dims without position
    qk_rope_head_dim: int = 64  # rotary dims (one shared rope key per token)
    v_head_dim: int = 128
    lora_scale: bool = False  # LongCat-Flash: q *= sqrt(dim / q_lora_rank), normed latent *= sqrt(dim / kv_lora_rank)
    latent_norm_eps: float = 1e-6  # the RMSNorms of the q and kv latents (DeepSeek uses 1e-6 there)
    bias: bool = False  # biases of the down-projections q_a/kv_a and of o_proj (attention_bias)


@dataclass
class LinearAttentionConfig:
    """Causal linear attention with the elu+1 feature map (Katharopoulos et al. 2020, arXiv 2006.16236)."""

    num_heads: int = 8
    head_dim: Optional[int] = None  # None = dim // num_heads (keys and values)
    eps: float = 1e-6  # added to the normaliser phi(q).sum phi(k)
    chunk_size: int = 64


@dataclass
class GatedDeltaNetConfig:
    """Gated DeltaNet (Yang, Kautz, Hatamizadeh 2024, arXiv 2412.06464) as in Qwen3-Next."""

    num_key_heads: int = 16  # q/k heads; each serves num_value_heads // num_key_heads value heads
    num_value_heads: int = 32
    key_head_dim: int = 128
    value_head_dim: int = 128
    conv_kernel: int = 4  # short causal depthwise convolution over q, k, v
    chunk_size: int = 64


@dataclass
class Mamba2Config:
    """Mamba-2 / SSD (Dao & Gu 2024, arXiv 2405.21060): inner dim = num_heads * head_dim."""

    num_heads: int = 64
    head_dim: int = 64  # P
    state_size: int = 128  # N
    num_groups: int = 1  # B and C are shared by num_heads // num_groups heads
    conv_kernel: int = 4
    conv_bias: bool = True
    bias: bool = False  # in_proj / out_proj biases
    chunk_size: int = 256
    gated_norm: bool = True  # y = RMSNorm(y * silu(z)) per group; False: y * silu(z) (Falcon-H1 mamba_rms_norm=false)
    dt_min: float = 0.001  # init of dt = softplus(dt_bias): log-uniform in [dt_min, dt_max]
    dt_max: float = 0.1
    dt_floor: float = 1e-4
    dt_limit_min: float = 0.0  # clamp of dt in the scan (time_step_limit)
    dt_limit_max: float = float("inf")


@dataclass
class ParallelHybridConfig:
    """Falcon-H1 (arXiv 2507.22448) parallel hybrid: attention and Mamba2 read the same normed input,
    out = attention_multiplier * attention(x) + ssm_multiplier * mamba2(x)."""

    attention: AttentionConfig = field(default_factory=AttentionConfig)
    mamba2: Mamba2Config = field(default_factory=Mamba2Config)
    attention_multiplier: float = 1.0
    ssm_multiplier: float = 1.0


@dataclass
class MixerConfig:
    kind: str = "softmax_attention"  # softmax_attention | mla | linear_attention | gated_deltanet | mamba2 | parallel_hybrid
    attention: Optional[AttentionConfig] = None  # kind == softmax_attention
    mla: Optional[MLAConfig] = None  # kind == mla
    linear_attention: Optional[LinearAttentionConfig] = None  # kind == linear_attention
    gated_deltanet: Optional[GatedDeltaNetConfig] = None  # kind == gated_deltanet
    mamba2: Optional[Mamba2Config] = None  # kind == mamba2
    parallel_hybrid: Optional[ParallelHybridConfig] = None  # kind == parallel_hybrid


@dataclass
class RouterConfig:
    """Top-k token-choice routing (train/model/moe/router.py). `kind` picks the scores:
    softmax (Qwen3-MoE, Mixtral, LongCat-Flash), sigmoid (DeepSeek-V3, arXiv 2412.19437 eq. 13-16),
    topk_softmax (GPT-OSS: top-k on the logits, then a softmax over the k chosen)."""

    kind: str = "softmax"  # softmax | sigmoid | topk_softmax
    top_k: int = 2
    renormalize: bool = True  # divide the chosen weights by their sum (norm_topk_prob); topk_softmax always does
    scaling_factor: float = 1.0  # routed_scaling_factor: multiplies the chosen weights
    num_groups: int = 1  # n_group: experts split into groups, each scored by the sum of its top-2 scores
    topk_groups: int = 1  # topk_group: tokens pick experts only inside their best topk_groups groups
    bias: bool = False  # a learned bias on the router logits (GPT-OSS)
    # Auxiliary-loss-free balancing (DeepSeek-V3 sec. 2.1.2, Wang et al. arXiv 2408.15664): a bias added
    # to the scores for the top-k choice only, moved by bias_update_speed * sign(mean load - load) once
    # per optimizer step (Transformer.update_router_bias).
    score_correction_bias: bool = False
    bias_update_speed: float = 0.0  # gamma (DeepSeek-V3: 0.001)
    aux_loss_coef: float = 0.0  # load-balancing loss alpha (Switch Transformer arXiv 2101.03961 eq. 4)
    aux_loss_kind: str = "global_batch"  # global_batch | sequence (DeepSeek-V3 eq. 17-20)
    z_loss_coef: float = 0.0  # router z-loss (ST-MoE arXiv 2202.08906 eq. 5)


@dataclass
class MoEConfig:
    """Mixture of experts (train/model/moe/). Routed experts are GLU feed-forwards of `hidden_dim`
    (the FFNConfig's activation) stored as [E, ...] tensors; zero-computation experts return their input
    (LongCat-Flash, arXiv 2509.01322 sec. 2.2); a shared expert of `shared_hidden_dim` sees every token
    (DeepSeekMoE arXiv 2401.06066), optionally scaled by sigmoid(w . x) (Qwen2-MoE, Qwen3-Next)."""

    num_experts: int = 8  # routed experts E
    hidden_dim: int = 256  # F of one routed expert
    num_zero_experts: int = 0  # Z identity experts, indices E .. E+Z-1 in the router
    shared_hidden_dim: int = 0  # 0: no shared expert; DeepSeek: n_shared_experts * hidden_dim
    shared_gate: bool = False
    bias: bool = False  # routed expert biases (GPT-OSS)
    swiglu_limit: Optional[float] = None  # GPT-OSS clamped SwiGLU: (clamp(up) + 1) * g * sigmoid(alpha g), g = min(gate, limit)
    swiglu_alpha: float = 1.702
    grouped_mm: bool = True  # torch._grouped_mm where available; False: a loop over the experts' sorted token slices
    # None: dropless. Else each expert takes at most ceil(capacity_factor * T * top_k / (E + Z)) of a
    # forward's T tokens' choices (per rank, before any all-to-all); later tokens' extra choices are dropped
    # (they keep the residual and their other choices) as in GShard (arXiv 2006.16668) and Switch (2101.03961).
    capacity_factor: Optional[float] = None
    router: RouterConfig = field(default_factory=RouterConfig)


@dataclass
class FFNConfig:
    kind: str = "glu"  # mlp | glu | moe | none (no feed-forward sublayer: Mamba2 blocks are norm + mixer only)
    hidden_dim: int = 1024
    # gelu (erf) | gelu_tanh | silu | relu | relu2 (squared ReLU) | sigmoid; glu+silu = SwiGLU, glu+gelu = GEGLU,
    # glu+relu = ReGLU, glu+sigmoid = GLU; the routed experts of kind moe are GLUs with this activation
    activation: str = "silu"
    bias: bool = False
    moe: Optional[MoEConfig] = None  # kind == moe


@dataclass
class HyperConnectionConfig:
    """Several residual streams with learned mixing (train/model/residual/hyper_connections.py,
    manifold_hyper_connections.py). static / dynamic: Hyper-Connections (Zhu et al. 2024, arXiv 2409.19606);
    manifold: mHC, the mixing projected onto doubly stochastic matrices (Xie et al. 2025, arXiv 2512.24880,
    as DeepSeek-V4 runs it)."""

    kind: str = "none"  # none | static | dynamic | manifold
    streams: int = 4  # n: residual streams (the paper's expansion rate)
    sinkhorn_iters: int = 20  # manifold: Sinkhorn-Knopp iterations
    eps: float = 1e-6  # manifold: added to the weights and the Sinkhorn denominators


@dataclass
class ResidualConfig:
    """How the sublayers meet the residual stream (train/model/residual/)."""

    # sequential: mixer, then feed-forward; parallel: both read the same input and add to it (GPT-J, PaLM)
    arrangement: str = "sequential"  # sequential | parallel
    parallel_shared_norm: bool = True  # parallel: one norm feeds both (GPT-J, PaLM); False: one each (GPT-NeoX)
    hyper_connections: HyperConnectionConfig = field(default_factory=HyperConnectionConfig)
    # ResFormer (arXiv 2410.17897): every softmax attention layer after the first mixes the first one's values in
    value_residual: bool = False
    # what multiplies each sublayer's output before it joins the residual: layerscale = a learned per-channel
    # vector (CaiT, arXiv 2103.17239); depth = the constant 1 / sqrt(2 * num_layers) (depth-muP, arXiv 2310.02244)
    branch_scale: str = "none"  # none | layerscale | depth
    layerscale_init: float = 0.1  # layerscale: initial value of every channel


@dataclass
class MTPConfig:
    """DeepSeek-V3 multi-token prediction (arXiv 2412.19437 sec. 2.2; train/model/mtp.py): `depth` sequential
    modules, module k predicting token t+k+1 with the shared embedding and output head. Trained beside the
    next-token loss, never run at inference."""

    depth: int = 0  # D: 0 = none (DeepSeek-V3: 1)
    loss_weight: float = 0.3  # lambda: the MTP loss is lambda / D * the sum of the modules' mean losses


@dataclass
class ModelConfig:
    family: str = "custom"  # gpt2 | llama3 | qwen3 | gemma3 | olmo2 | ... | custom: which Hugging Face adapter exports it
    vocab_size: int = 8192
    dim: int = 512
    num_layers: int = 8
    max_seq_len: int = 2048  # size of a learned position table; max_position_embeddings on export
    tie_embeddings: bool = False
    init_std: float = 0.02
    # where a block's norms sit around each sublayer f (mixer, feed-forward):
    #   pre            x + f(norm(x))                    (GPT-2, Llama): mixer_norm, ffn_norm
    #   sandwich       x + post_norm(f(norm(x)))         (Gemma 2/3, arXiv 2408.00118 sec. 2): adds mixer_post_norm, ffn_post_norm
    #   post_sublayer  x + post_norm(f(x))               (OLMo 2, arXiv 2501.00656 sec. 3.3.1): mixer_post_norm, ffn_post_norm only
    #   post           post_norm(x + f(x))               (the original Transformer, arXiv 1706.03762): the same two
    # (sandwich is also Peri-LN, arXiv 2502.02732)
    norm_placement: str = "pre"  # pre | sandwich | post_sublayer | post
    layer_norm_placements: List[str] = field(default_factory=list)  # per layer, cycled; empty: norm_placement everywhere
    # token embeddings times this, cast to their dtype first as transformers does (Gemma: sqrt(dim)); None = 1
    embedding_scale: Optional[float] = None
    # output logits = final_softcap * tanh(logits / final_softcap) (Gemma 2, arXiv 2408.00118 sec. 2); the
    # chunked cross-entropy (train/loss.py) applies it too
    final_softcap: Optional[float] = None
    norm: NormConfig = field(default_factory=NormConfig)
    position: PositionConfig = field(default_factory=PositionConfig)
    residual: ResidualConfig = field(default_factory=ResidualConfig)
    mtp: MTPConfig = field(default_factory=MTPConfig)
    mixers: Dict[str, MixerConfig] = field(default_factory=dict)
    ffns: Dict[str, FFNConfig] = field(default_factory=dict)
    layer_mixers: List[str] = field(default_factory=list)
    layer_ffns: List[str] = field(default_factory=list)
    # LongCat-Flash shortcut-connected MoE (arXiv 2509.01322 sec. 2.1): a name in `ffns`. Each of the
    # num_layers layers is then two pre-norm sublayer pairs (mixers/ffns 2i and 2i+1) plus this MoE,
    # which reads the normed FFN input of the first pair and is added after the second.
    shortcut_moe: Optional[str] = None
    # How softmax attention and MLA are computed (the schedule, not the function; train/model/attention.py):
    # auto = FlexAttention on CUDA for document, window and sink masks, SDPA otherwise (always on the CPU);
    # dense = SDPA, with a dense boolean mask where one is needed; flex = FlexAttention except when decoding
    # (on the CPU forward only: torch 2.13 has no CPU backward for it)
    attention_backend: str = "auto"  # auto | dense | flex
    # How the linear mixers (gated_deltanet, mamba2, their causal convs) compute: auto = the fla /
    # mamba_ssm / causal_conv1d kernels where installed and the tensors are CUDA bf16/fp16, else PyTorch;
    # torch = always the PyTorch chunked code (train/model/mixer/kernels.py). The schedule, not the function.
    linear_kernels: str = "auto"

    def num_sublayers(self) -> int:
        """Mixer + feed-forward pairs: num_layers, or two per layer with a shortcut MoE."""
        return self.num_layers * (2 if self.shortcut_moe else 1)

    def layer_norm_placement(self, layer: int) -> str:
        placements = self.layer_norm_placements or [self.norm_placement]
        return placements[layer % len(placements)]

    def layer_mixer(self, layer: int) -> MixerConfig:
        return self.mixers[self.layer_mixers[layer % len(self.layer_mixers)]]

    def layer_ffn(self, layer: int) -> FFNConfig:
        return self.ffns[self.layer_ffns[layer % len(self.layer_ffns)]]


# the section a mixer or feed-forward of each kind reads its settings from (the others stay None)
MIXER_SECTIONS = {"softmax_attention": "attention", "mla": "mla", "linear_attention": "linear_attention",
                  "gated_deltanet": "gated_deltanet", "mamba2": "mamba2", "parallel_hybrid": "parallel_hybrid"}
FFN_SECTIONS = {"moe": "moe"}
LINEAR_KERNELS = ("auto", "torch")  # the values of model.linear_kernels
NORM_PLACEMENTS = ("pre", "sandwich", "post_sublayer", "post")  # the values of model.norm_placement
NORM_KINDS = ("rmsnorm", "layernorm", "dyt")
ARRANGEMENTS = ("sequential", "parallel")
HYPER_CONNECTIONS = ("none", "static", "dynamic", "manifold")
BRANCH_SCALES = ("none", "layerscale", "depth")
QK_NORM_OVER = ("head", "all")  # the values of attention.qk_norm_over


def check_model_config(config: ModelConfig) -> None:
    """The layer patterns name known table entries, and every mixer and feed-forward has the section its
    kind reads (e.g. `attention:` for softmax_attention); the error names the key to set."""
    if config.linear_kernels not in LINEAR_KERNELS:
        raise ValueError(f"model.linear_kernels={config.linear_kernels!r} is not one of {LINEAR_KERNELS}; set auto "
                         "(the fla / mamba_ssm / causal_conv1d kernels on CUDA where installed) or torch (always PyTorch)")
    for key, value in (("norm_placement", config.norm_placement), *(("layer_norm_placements", v) for v in config.layer_norm_placements)):
        if value not in NORM_PLACEMENTS:
            raise ValueError(f"model.{key}: {value!r} is not one of {NORM_PLACEMENTS}")
    for key, value, allowed in (("norm.kind", config.norm.kind, NORM_KINDS),
                                ("residual.arrangement", config.residual.arrangement, ARRANGEMENTS),
                                ("residual.hyper_connections.kind", config.residual.hyper_connections.kind, HYPER_CONNECTIONS),
                                ("residual.branch_scale", config.residual.branch_scale, BRANCH_SCALES)):
        if value not in allowed:
            raise ValueError(f"model.{key}={value!r} is not one of {allowed}")
    if config.shortcut_moe is not None and config.ffns.get(config.shortcut_moe, None) is None:
        raise ValueError(f"model.shortcut_moe={config.shortcut_moe!r} is not in model.ffns {sorted(config.ffns)}")
    for pattern, table in (("layer_mixers", "mixers"), ("layer_ffns", "ffns")):
        names, known = getattr(config, pattern), getattr(config, table)
        if not names:
            raise ValueError(f"model.{pattern} is empty; name at least one entry of model.{table}")
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"model.{pattern} names {unknown}, which are not in model.{table} {sorted(known)}")
    for table, sections in (("mixers", MIXER_SECTIONS), ("ffns", FFN_SECTIONS)):
        for name, entry in getattr(config, table).items():
            section = sections.get(entry.kind)
            if section is not None and getattr(entry, section) is None:
                raise ValueError(f"model.{table}.{name} has kind {entry.kind} but no `{section}:` section; "
                                 f"set model.{table}.{name}.{section}")
    check_residual(config)  # after the tables: it reads the layers' mixers


def check_residual(config: ModelConfig) -> None:
    """The residual options that do not combine, each refused with the key to change."""
    r, hc = config.residual, config.residual.hyper_connections
    placements = {config.layer_norm_placement(i) for i in range(config.num_sublayers())}
    default = ResidualConfig()
    if config.shortcut_moe is not None and (placements != {"pre"} or r != default or config.mtp.depth):
        raise ValueError("model.shortcut_moe needs model.norm_placement=pre (the MoE reads the pre-normed FFN input), "
                         "the default model.residual and no model.mtp")
    if hc.kind != "none" and "post" in placements:
        raise ValueError("model.residual.hyper_connections needs a norm placement other than post (the streams are "
                         "not one sum to normalise); set model.norm_placement=pre")
    if hc.kind != "none" and hc.streams < 1:
        raise ValueError(f"model.residual.hyper_connections.streams={hc.streams} must be at least 1")
    kinds = [config.layer_mixer(i).kind for i in range(config.num_layers)]
    if r.value_residual and ("softmax_attention" not in kinds or "parallel_hybrid" in kinds):
        raise ValueError("model.residual.value_residual mixes the values of softmax_attention layers: it needs at least "
                         "one and no parallel_hybrid mixer")
    if config.mtp.depth < 0:
        raise ValueError(f"model.mtp.depth={config.mtp.depth} must be 0 (none) or more")
    if config.mtp.depth and (hc.kind != "none" or r.value_residual):
        raise ValueError("model.mtp runs plain blocks on one stream: it does not combine with "
                         "model.residual.hyper_connections or model.residual.value_residual")


@dataclass
class _PresetRoot:
    """Primary config used by load_preset: just a typed `model` node."""

    model: ModelConfig = field(default_factory=ModelConfig)


ConfigStore.instance().store(name="_model_preset_root", node=_PresetRoot)


def load_preset(name: str) -> ModelConfig:
    """Compose configs/model/<name>.yaml (with its Hydra defaults) into a typed ModelConfig."""
    available = sorted(p.stem for p in (CONFIGS_DIR / "model").glob("*.yaml"))
    if name not in available:
        raise ValueError(f"unknown model preset {name!r}: no configs/model/{name}.yaml; available: {available}")
    return to_model_config(compose("_model_preset_root", [f"+model={name}"]).model)


def to_model_config(cfg) -> ModelConfig:
    """Validate a dict/DictConfig against the schema and return the ModelConfig object."""
    merged = OmegaConf.merge(OmegaConf.structured(ModelConfig), cfg)
    return OmegaConf.to_object(merged)


def apply_overrides(config: ModelConfig, overrides: dict) -> ModelConfig:
    """Set dotted keys, e.g. {"mixers.full.attention.num_kv_heads": 1}; an unknown key raises.
    Values may be whole sections ({"mixers.sliding": {...}}); lists replace lists."""
    cfg = OmegaConf.structured(config)  # dataclass nodes reject unknown keys; dict tables accept new names
    for key, value in overrides.items():
        for part in reversed(key.split(".")):
            value = {part: value}
        cfg = OmegaConf.merge(cfg, value)
    return OmegaConf.to_object(cfg)
