"""The attention backends shared by softmax attention and MLA: which kernel computes
softmax(q k^T * scale + mask) v for a layer, chosen per call by `model.attention_backend` and the
tensors' device.

dense  F.scaled_dot_product_attention: `is_causal` when the mask is only causal (Flash/cuDNN on CUDA),
       else a boolean [b, 1, T, L] mask (`attention_mask`), which SDPA turns into a float bias and
       computes in full (T^2 work and memory, whatever the documents and window leave). With GPT-OSS
       sinks the bias gains a sink column. The CPU path, the decoding path, and the reference.
flex   FlexAttention (Dong et al. 2024, arXiv 2412.05496) with a BlockMask built once per forward
       (`Documents.block_mask`, or `causal_block_mask` without documents) and shared by every layer:
       fully masked tiles are skipped, so a window W costs T*W and documents their own lengths. Sinks
       rescale the output by its log-sum-exp (`rescale_by_sinks`) instead of a [b, H, T, L+1] bias.
       Off the CPU through one lazily compiled flex_attention (the fused kernel); on the CPU eager,
       forward only (torch 2.13 has no CPU backward for it).
auto   flex on CUDA when there is a document, window or sink mask or a soft-cap; everything else dense.

Logit soft-capping (Gemma 2, arXiv 2408.00118 sec. 2: scores = cap * tanh(scores / cap), before the mask)
is a score_mod in FlexAttention; SDPA has no hook for it, so the dense path then computes the scores
explicitly (`explicit_attention`, T*L memory per head: the reference and the CPU path).

Decoding with a KV cache (start > 0 or L != T) always takes the dense path, and so does a sequence split
over devices (`Documents.split`, context parallelism): the queries of this device's tokens attend to the
keys and values of all of them, gathered (`Documents.keys`), under a mask of their window positions.
"""

import functools

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import AuxRequest, flex_attention

from train.model.documents import Documents, causal_block_mask, causal_mask

BACKENDS = ("auto", "dense", "flex")


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"model.attention_backend={backend!r} is not one of {BACKENDS}")


def attention_mask(T: int, L: int, start: int, documents: Documents | None, device, window: int | None = None):
    """Boolean [b, 1, T, L] (b = B with documents, else 1): True where query t (at position start + t) may
    see key l: causal, inside the window, and in the same document (built once per forward and window)."""
    if documents is None:
        return causal_mask(T, L, start, device, window)[None, None]
    if L != T and documents.split is None:
        raise ValueError("doc_ids cannot be combined with a KV cache (decode one document at a time)")
    return documents.dense_mask(window)


def softcap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    """cap * tanh(x / cap): bounded in (-cap, cap), about x where |x| << cap (Gemma 2, arXiv 2408.00118
    sec. 2); the identity for cap None. Written as transformers' Gemma code, so fp32 values match."""
    return x if cap is None else torch.tanh(x / cap) * cap


def attend(q_BHTK, k_BGLK, v_BGLV, backend: str, start: int = 0, documents: Documents | None = None,
           window: int | None = None, sinks_H: torch.Tensor | None = None, scale: float | None = None,
           logit_cap: float | None = None):
    """Attention output [B, H, T, V] of queries at positions start..start+T-1 over L keys, with G key/value
    heads shared by groups of the H query heads (V may differ from the q/k head dim K, as in MLA).
    `scale` None = K^-1/2; `logit_cap`: soft-capping of the scaled scores."""
    if documents is not None:  # a split sequence: the keys and values of all its tokens
        k_BGLK, v_BGLV = documents.keys(k_BGLK), documents.keys(v_BGLV)
    T, L = q_BHTK.shape[2], k_BGLK.shape[2]
    masked = documents is not None or window is not None or sinks_H is not None or logit_cap is not None
    if backend == "auto":
        backend = "flex" if q_BHTK.device.type == "cuda" and masked else "dense"
    if backend == "dense" or start > 0 or L != T:
        return dense_attention(q_BHTK, k_BGLK, v_BGLV, start, documents, window, sinks_H, scale, logit_cap)
    return flex_attend(q_BHTK, k_BGLK, v_BGLV, documents, window, sinks_H, scale, logit_cap)


def explicit_attention(q_BHTK, k_BGLK, v_BGLV, mask_bHTL: torch.Tensor, sinks_H: torch.Tensor | None = None,
                       scale: float | None = None, logit_cap: float | None = None):
    """softmax(softcap(q k^T * scale) masked, [sink]) v written out, as transformers' eager attention: the
    scores [B, H, T, L] are materialised. `mask_bHTL` is boolean, True where a query may see a key."""
    H, G, K = q_BHTK.shape[1], k_BGLK.shape[1], q_BHTK.shape[-1]
    k_BHLK, v_BHLV = k_BGLK.repeat_interleave(H // G, dim=1), v_BGLV.repeat_interleave(H // G, dim=1)
    scores_BHTL = softcap(q_BHTK @ k_BHLK.transpose(-1, -2) * (K**-0.5 if scale is None else scale), logit_cap)
    scores_BHTL = scores_BHTL.masked_fill(~mask_bHTL, float("-inf"))
    if sinks_H is not None:  # an extra key column with logit sinks[h] and a zero value (GPT-OSS)
        sink_BHT1 = sinks_H.to(scores_BHTL.dtype).view(1, -1, 1, 1).expand(*scores_BHTL.shape[:3], 1)
        scores_BHTL = torch.cat([scores_BHTL, sink_BHT1], dim=-1)
    probs_BHTL = torch.softmax(scores_BHTL.float(), dim=-1).to(q_BHTK.dtype)
    if sinks_H is not None:
        probs_BHTL = probs_BHTL[..., :-1]
    return probs_BHTL @ v_BHLV


def dense_attention(q_BHTK, k_BGLK, v_BGLV, start: int, documents: Documents | None, window: int | None,
                    sinks_H: torch.Tensor | None, scale: float | None, logit_cap: float | None = None):
    T, L = q_BHTK.shape[2], k_BGLK.shape[2]
    gqa = q_BHTK.shape[1] != k_BGLK.shape[1]
    if documents is None and window is None and sinks_H is None and logit_cap is None and start == 0:
        return F.scaled_dot_product_attention(q_BHTK, k_BGLK, v_BGLV, is_causal=True, scale=scale, enable_gqa=gqa)
    mask_bHTL = attention_mask(T, L, start, documents, q_BHTK.device, window)
    if logit_cap is not None:
        return explicit_attention(q_BHTK, k_BGLK, v_BGLV, mask_bHTL, sinks_H, scale, logit_cap)
    if sinks_H is not None:
        # A sink is an extra key with logit sinks[h] and a zero value: it only adds exp(sink) to the
        # softmax denominator, as in GPT-OSS. Fed to SDPA as a float bias column.
        B, G, _, K = k_BGLK.shape
        bias_bHTL = torch.zeros(mask_bHTL.shape, dtype=q_BHTK.dtype, device=q_BHTK.device)
        bias_bHTL = bias_bHTL.masked_fill(~mask_bHTL, float("-inf"))
        sink_bHT1 = sinks_H.to(q_BHTK.dtype).view(1, -1, 1, 1).expand(bias_bHTL.shape[0], -1, T, 1)
        mask_bHTL = torch.cat([bias_bHTL.expand(-1, q_BHTK.shape[1], -1, -1), sink_bHT1], dim=-1)
        k_BGLK = torch.cat([k_BGLK, k_BGLK.new_zeros(B, G, 1, K)], 2)
        v_BGLV = torch.cat([v_BGLV, v_BGLV.new_zeros(B, G, 1, v_BGLV.shape[-1])], 2)
    return F.scaled_dot_product_attention(q_BHTK, k_BGLK, v_BGLV, attn_mask=mask_bHTL, scale=scale, enable_gqa=gqa)


def flex_attend(q_BHTK, k_BGTK, v_BGTV, documents: Documents | None, window: int | None,
         sinks_H: torch.Tensor | None, scale: float | None, logit_cap: float | None = None):
    """FlexAttention over T queries and T keys (no cache) with the forward's shared BlockMask."""
    on_cpu = q_BHTK.device.type == "cpu"
    if on_cpu and torch.is_grad_enabled() and any(t.requires_grad for t in (q_BHTK, k_BGTK, v_BGTV)):
        raise ValueError("model.attention_backend=flex has no backward on the CPU in torch 2.13 (FlexAttention "
                         "trains only on GPUs); set model.attention_backend=auto or dense to train on the CPU")
    T = q_BHTK.shape[2]
    block_mask = causal_block_mask(T, q_BHTK.device, window) if documents is None else documents.block_mask(window)
    # eager flex is an unfused reference that materialises the scores; compiled flex on the CPU cannot
    # return the log-sum-exp (torch 2.13), and the CPU only runs short test sequences. Inside a compiled
    # block (train.compile) the plain call is already compiled with the block.
    attention = flex_attention if on_cpu or torch.compiler.is_compiling() else compiled_flex_attention()
    kwargs = dict(block_mask=block_mask, scale=scale, enable_gqa=q_BHTK.shape[1] != k_BGTK.shape[1])
    if logit_cap is not None:
        kwargs["score_mod"] = softcap_score_mod(logit_cap)
    if sinks_H is None:
        return attention(q_BHTK, k_BGTK, v_BGTV, **kwargs)
    out_BHTV, aux = attention(q_BHTK, k_BGTK, v_BGTV, return_aux=AuxRequest(lse=True), **kwargs)
    return rescale_by_sinks(out_BHTV, aux.lse, sinks_H)


@functools.cache
def softcap_score_mod(cap: float):
    """FlexAttention score_mod (applied to the scaled score, before the mask) for soft-capping; one function
    per cap, so a compiled flex_attention sees the same one every layer and call."""

    def score_mod(score, b, h, q_idx, kv_idx):
        return softcap(score, cap)

    return score_mod


def rescale_by_sinks(out_BHTV, lse_BHT, sinks_H):
    """Attention with a sink logit s_h in each head's softmax denominator, from the attention without it.
    With lse = log sum_l exp(score_l), the sink scales every probability by exp(lse) / (exp(lse) + exp(s_h))
    = sigmoid(lse - s_h), and its zero value adds nothing (GPT-OSS's sinks, arXiv 2508.10925); this needs
    no [B, H, T, L+1] bias. Computed in fp32, as lse is."""
    factor_BHT = torch.sigmoid(lse_BHT.float() - sinks_H.float().view(1, -1, 1))
    return out_BHTV * factor_BHT.unsqueeze(-1).to(out_BHTV.dtype)


_compiled_flex_attention = None


def compiled_flex_attention():
    """One torch.compile(flex_attention) for all layers, made on first use: the fused Triton kernel exists
    only compiled (torchtitan keeps the same module-level instance)."""
    global _compiled_flex_attention
    if _compiled_flex_attention is None:
        _compiled_flex_attention = torch.compile(flex_attention)
    return _compiled_flex_attention
