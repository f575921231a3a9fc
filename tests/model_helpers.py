"""Helpers for model tests."""

from train.model import load_model


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
