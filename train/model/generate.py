"""Autoregressive sampling with a KV cache: greedy (temperature 0), temperature and nucleus
(top-p, Holtzman et al. 2019) sampling. The prompt is run once, then one token per step."""

import torch

from train.model.kv_cache import KVCache
from train.model.transformer import Transformer


def sample_next(logits_BV: torch.Tensor, temperature: float, top_p: float, generator=None) -> torch.Tensor:
    if temperature == 0.0:
        return logits_BV.argmax(dim=-1)
    probs_BV = torch.softmax(logits_BV.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_BV, order_BV = probs_BV.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p: drop a token if the mass before it does
        drop_BV = sorted_BV.cumsum(dim=-1) - sorted_BV >= top_p
        sorted_BV = sorted_BV.masked_fill(drop_BV, 0.0)
        probs_BV = torch.zeros_like(probs_BV).scatter(-1, order_BV, sorted_BV)
    return torch.multinomial(probs_BV, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: Transformer,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    eos_token_id: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Extend the prompts input_ids [B, T] by up to max_new_tokens tokens; returns [B, T + new].
    Rows that produced eos_token_id keep emitting it until every row is done."""
    B, T = input_ids.shape
    cache = KVCache(max_len=T + max_new_tokens)
    logits_BV = model(input_ids, cache=cache)[:, -1]
    tokens, done_B = [input_ids], torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    for _ in range(max_new_tokens):
        next_B = sample_next(logits_BV, temperature, top_p, generator)
        if eos_token_id is not None:
            next_B = next_B.masked_fill(done_B, eos_token_id)
            done_B |= next_B == eos_token_id
        tokens.append(next_B[:, None])
        if done_B.all() or len(tokens) == max_new_tokens + 1:
            break
        logits_BV = model(next_B[:, None], cache=cache)[:, -1]
    return torch.cat(tokens, dim=1)
