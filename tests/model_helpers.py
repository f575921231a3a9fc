"""Helpers for model tests."""

import torch

from train.model import load_model


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
