"""Growing a model's vocabulary for added tokens (a chat template's special tokens): the new rows of the
embedding and of the output head are the mean of the old rows, so a new token starts as an average token
and the model's outputs hardly move until it is trained (Hewitt 2021, "Initializing new word embeddings
for pretrained language models"; TRL's clone_chat_template resizes the same two tensors)."""

import torch

VOCAB_TENSORS = ("embed.weight", "output.weight")  # [vocab, dim]; no output.weight when tied


def grow_vocab(state_dict: dict[str, torch.Tensor], vocab_size: int) -> dict[str, torch.Tensor]:
    """The state dict with its vocabulary tensors grown to `vocab_size` rows (never shrunk)."""
    grown = dict(state_dict)
    for name in VOCAB_TENSORS:
        old = grown.get(name)
        if old is not None and old.shape[0] < vocab_size:
            mean = old.float().mean(dim=0, keepdim=True).to(old.dtype)
            grown[name] = torch.cat([old, mean.expand(vocab_size - old.shape[0], -1)])
    return grown
