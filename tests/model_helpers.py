"""Helpers for model tests."""

import torch

from train.model import load_model


def perturbed(model, bias_scale: float = 0.1, router_suffix: str = "router.gate.weight"):
    """`model` with its 1-D parameters (norms, biases) moved off their init and its routers made decisive, so
    a parity check sees every weight; in place, returned for chaining."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1:
                param.add_(bias_scale * torch.randn_like(param))
            if name.endswith(router_suffix):
                param.normal_(0, 1.0)
    return model


def hf_logits(model, ids):
    """A transformers model's logits, without gradients."""
    with torch.no_grad():
        return model(ids).logits


def hf_roundtrip(tmp_path_factory, reference):
    """name -> (transformers model `reference(name)`, our model loaded from its save_pretrained folder), cached."""
    cache = {}

    def get(name):
        if name not in cache:
            ref = reference(name)
            directory = tmp_path_factory.mktemp(name)
            ref.save_pretrained(directory)
            cache[name] = ref, load_model(directory).eval()
        return cache[name]

    return get


def assert_cached_decoding_equals_full(model, ids_BT, prompt: int, tolerance: float):
    """Prefill `prompt` tokens into a cache, then decode the rest one token at a time: the logits must
    equal one full forward pass over the whole sequence."""
    import torch

    from train.model.kv_cache import KVCache

    T = ids_BT.shape[1]
    with torch.no_grad():
        full_BTV = model(ids_BT)
        cache = KVCache(max_len=T)
        steps = [model(ids_BT[:, :prompt], cache=cache)]
        steps += [model(ids_BT[:, t : t + 1], cache=cache) for t in range(prompt, T)]
    assert full_BTV.std() > 0.1
    torch.testing.assert_close(torch.cat(steps, dim=1), full_BTV, atol=tolerance, rtol=tolerance)


def naive_choice_logliks(model, tokenizer, context: str, choices, max_len: int) -> list:
    """Each choice's summed log-likelihood after `context` + " ": one forward per choice over the full
    logits, the continuation being the ids of context + " " + choice after those of the context alone (as
    lm-eval splits them), left-truncated to max_len + 1 ids. The reference for train/downstream.py."""
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False).ids  # noqa: E731
    context_ids, logliks = encode(context), []
    for choice in choices:
        whole = encode(context + " " + choice)
        continuation = len(whole) - len(context_ids)
        ids = whole[-(max_len + 1):]
        with torch.no_grad():
            log_probs_TV = model(torch.tensor([ids[:-1]]))[0].double().log_softmax(-1)
        scored = range(len(ids) - 1 - continuation, len(ids) - 1)  # the positions predicting the continuation
        logliks.append(sum(log_probs_TV[t, ids[t + 1]].item() for t in scored))
    return logliks
