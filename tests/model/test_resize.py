"""Growing the vocabulary: new embedding and head rows are the mean of the old rows, written out by hand."""

import torch

from train.model.resize import grow_vocab


def test_new_rows_are_the_mean_of_the_old_ones():
    torch.manual_seed(0)
    state = {"embed.weight": torch.randn(5, 3), "output.weight": torch.randn(5, 3).bfloat16(), "norm.weight": torch.ones(3)}
    grown = grow_vocab(state, 7)
    for name in ("embed.weight", "output.weight"):
        old = state[name]
        mean = [sum(old[i, j].float() for i in range(5)) / 5 for j in range(3)]
        assert grown[name].shape == (7, 3) and grown[name].dtype == old.dtype and torch.equal(grown[name][:5], old)
        for row in (5, 6):
            torch.testing.assert_close(grown[name][row].float(), torch.stack(mean).to(old.dtype).float())
    assert grown["norm.weight"] is state["norm.weight"]
    tied = grow_vocab({"embed.weight": state["embed.weight"]}, 7)  # tied embeddings: no output.weight
    assert set(tied) == {"embed.weight"} and grow_vocab(state, 5)["embed.weight"] is state["embed.weight"]
