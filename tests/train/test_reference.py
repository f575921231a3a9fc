"""Which stages and losses get a reference model, and the fingerprint that decides whether the precomputed
reference log-probs in a run folder are still valid. (That precomputed and live references give the same
losses, and that a restart reads the file instead of computing it again: tests/train/test_post_training.py.)"""

import dataclasses

import pytest

from data.chat.preferences import EncodedPair
from train.config import TrainConfig
from train.reference import fingerprint
from train.stages import STAGES, reference, stage_of


@pytest.mark.parametrize("loss_type, precompute, expected", [
    ("sigmoid", False, "live"), ("ipo", True, "precomputed"), ("simpo", False, None), ("orpo", True, None)])
def test_reference_free_losses_build_no_reference(loss_type, precompute, expected):
    config = TrainConfig(stage="dpo")
    config.dpo.loss_type, config.dpo.precompute_reference = loss_type, precompute
    assert reference(STAGES["dpo"], config) == expected
    assert reference(STAGES["sft"], config) is None


def test_an_unknown_loss_type_is_named(tmp_path):
    config = TrainConfig(stage="dpo")
    config.init.weights, config.dpo.loss_type = str(tmp_path), "kto"
    with pytest.raises(ValueError, match="dpo.loss_type='kto' is unknown"):
        stage_of(config)


def test_fingerprint_changes_with_weights_data_and_precision(tmp_path):
    weights = tmp_path / "model"
    weights.mkdir()
    (weights / "model.safetensors").write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    config = TrainConfig(stage="dpo")
    config.init.weights = str(weights)
    pairs = [EncodedPair([1, 2, 3], [-100, 2, 3], [1, 2, 4], [-100, 2, 4], "a"), EncodedPair([5, 6], [-100, 6], [5, 7], [-100, 7], "b")]
    original = fingerprint(config, pairs)
    assert fingerprint(config, [dataclasses.replace(p, where="elsewhere") for p in pairs]) == original  # tokens only

    changed_tokens = [pairs[0], dataclasses.replace(pairs[1], rejected_ids=[5, 8])]
    assert fingerprint(config, changed_tokens) != original
    assert fingerprint(config, pairs[::-1]) != original  # the values are stored by position

    config.parallel.param_dtype = "fp32"
    assert fingerprint(config, pairs) != original
    config.parallel.param_dtype = "bf16"

    data = bytearray((weights / "model.safetensors").read_bytes())
    data[-1] ^= 1  # the last byte is in the last sampled block
    (weights / "model.safetensors").write_bytes(bytes(data))
    assert fingerprint(config, pairs) != original
