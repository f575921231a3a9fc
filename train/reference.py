"""The reference's log-probabilities computed once, before training (`dpo.precompute_reference=true`).

DPO's loss needs the frozen reference model's log-prob of each response. Live, the reference is a second
model that runs beside the policy on every batch. Precomputed, it runs once over every training and
held-out pair before the first step (each rank its share of the pairs, then summed over the ranks so that
every rank holds all of them) and is freed; each pair's two values then travel with it through the data
loader into its batch, as "reference_2B" (train/objectives.py: DirectPreference). Training keeps one
model in memory and runs one forward less per step.

The values are saved in the run folder (`reference_logps.pt`, written atomically) with a fingerprint of
what they depend on: the model config, the compute precision, the initial weights (a sample of their
files' bytes) and the token ids of every pair. A restart reads them instead of computing them again; a
file with another fingerprint (other initial weights, data or precision) is computed anew.

They are the live reference's values: the same model, sharded the same way, on batches of the same layout
(`data.pack`; the pairs are grouped by length here, which changes only the padding and which sequences
share a row, never a response token's context). They are equal in either layout up to float rounding, so
the fingerprint leaves the layout out: a run resumed with the other `data.pack` reads them again.
tests/train/test_post_training.py trains DPO both ways on 2 ranks, the precomputed run killed and
restarted, and finds the same losses.
"""

import hashlib
import json
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.data import Dataset

from common.atomic import atomic_write
from train.config import TrainConfig
from train.data_loader import Indexed, StageData, to_device
from train.objectives import response_logps
from train.parallel.world import World, all_reduce_sum
from train.run_folder import REFERENCE_LOGPS

SAMPLED_BLOCKS, BLOCK_BYTES = 16, 1 << 16  # bytes of each weight file read for the fingerprint
# Pairs per forward, in training micro-batches: a forward without gradients keeps no activations for a
# backward, so several micro-batches fit in the memory one training micro-batch takes.
MICRO_BATCHES_PER_FORWARD = 4


def fingerprint(config: TrainConfig, pairs: Sequence) -> str:
    """What the reference log-probs depend on, hashed: a different value means they must be computed again."""
    digest = hashlib.sha256()
    digest.update(json.dumps(OmegaConf.to_container(OmegaConf.structured(config.model)), sort_keys=True).encode())
    digest.update(config.parallel.param_dtype.encode())
    for path in sorted(Path(config.init.weights).glob("*.safetensors")) if config.init.weights else []:
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with open(path, "rb") as f:
            for offset in np.linspace(0, max(0, size - BLOCK_BYTES), SAMPLED_BLOCKS, dtype=np.int64):
                f.seek(int(offset))
                digest.update(f.read(BLOCK_BYTES))
    for pair in pairs:
        for tokens in (pair.chosen_ids, pair.chosen_labels, pair.rejected_ids, pair.rejected_labels):
            digest.update(np.asarray(tokens, dtype=np.int64).tobytes())
    return digest.hexdigest()


@torch.no_grad()
def compute(reference: torch.nn.Module, pairs: Sequence, collate: Callable, micro_batch: int, chunk_tokens: int,
            world: World, ranks: int) -> torch.Tensor:
    """[N, 2] fp32 on the host: the (chosen, rejected) summed response log-probs of every pair. The pairs,
    longest first, are dealt round-robin to the ranks; every rank runs the same number of forwards (a
    sharded model gathers its weights collectively), a rank with fewer pairs repeating its last batch."""
    longest_first = sorted(range(len(pairs)), key=lambda i: -max(len(pairs[i].chosen_ids), len(pairs[i].rejected_ids)))
    mine, batch_pairs = longest_first[world.rank :: ranks], micro_batch * MICRO_BATCHES_PER_FORWARD
    per_rank = -(-len(pairs) // ranks)
    logps_N2 = torch.zeros(len(pairs), 2, device=world.device)
    for start in range(0, per_rank, batch_pairs):
        chunk = mine[start : start + batch_pairs] or mine[-batch_pairs:] or longest_first[:1]
        batch = to_device(collate([(pairs[i], i) for i in chunk]), world.device, document_masking=True)
        logps_2B = response_logps(reference, batch, chunk_tokens)
        if start < len(mine):  # a repeated batch is not written
            logps_N2[chunk] = torch.stack(logps_2B.chunk(2), dim=1)
    return all_reduce_sum(logps_N2).cpu()  # each pair is filled on exactly one rank, zeros elsewhere


class WithReference(Dataset):
    """Training pairs with their reference log-probs: index -> ((pair, [chosen, rejected]), index)."""

    def __init__(self, pairs: Indexed, logps_N2: np.ndarray):
        self.pairs, self.logps_N2 = pairs, logps_N2

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        position = self.pairs.order(index)
        return (self.pairs.items[position], self.logps_N2[position]), index


def collate_with_reference(collate: Callable) -> Callable[[List], Dict[str, object]]:
    """The pairs' collate, plus their reference log-probs as "reference_2B" (chosen ones, then rejected)."""
    def collate_referenced(samples: List) -> Dict[str, object]:
        batch = collate([(pair, index) for (pair, _), index in samples])
        logps_B2 = torch.from_numpy(np.stack([logps for (_, logps), _ in samples]))
        batch["reference_2B"] = torch.cat([logps_B2[:, 0], logps_B2[:, 1]])
        return batch
    return collate_referenced


def precomputed(data: StageData, build_reference: Callable[[], torch.nn.Module], config: TrainConfig, world: World,
                ranks: int, micro_batch: int, say: Callable[[str], None]) -> StageData:
    """The stage data with every pair's reference log-probs: read from the run folder, or computed with the
    model `build_reference()` returns (then freed) and saved there."""
    train_pairs, val_pairs = list(data.train.items), [pair for pair, _ in data.val]
    path = config.run_dir / REFERENCE_LOGPS
    expected = fingerprint(config, train_pairs + val_pairs)
    saved = torch.load(path, weights_only=True) if path.is_file() else None
    if saved is not None and saved["fingerprint"] == expected:
        say(f"reference log-probs: read from {path}")
    else:
        if saved is not None:
            say(f"reference log-probs: {path} was computed for other initial weights, data or precision; computing again")
        started = time.perf_counter()
        reference = build_reference()
        logps_N2 = compute(reference, train_pairs + val_pairs, data.collate, micro_batch,
                           config.trainer.loss_chunk_tokens, world, ranks)
        del reference
        saved = {"fingerprint": expected, "train": logps_N2[: len(train_pairs)], "val": logps_N2[len(train_pairs) :]}
        if world.is_main:
            atomic_write(path, lambda tmp: torch.save(saved, tmp))
        say(f"reference log-probs: computed for {len(logps_N2):,} pairs in {time.perf_counter() - started:.1f} s, "
            f"saved to {path}")
    train_N2, val_N2 = saved["train"].numpy(), saved["val"].numpy()
    return StageData(WithReference(data.train, train_N2), [((pair, val_N2[i]), i) for i, (pair, _) in enumerate(data.val)],
                     collate_with_reference(data.collate), data.report)
