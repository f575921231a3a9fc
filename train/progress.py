"""Where the loop stands: the trainer's progress (checkpointed) and what one step produced."""

from dataclasses import dataclass, field
from typing import Dict, Optional


@dataclass
class Progress:
    """Optimizer steps taken and tokens trained on (checkpointed); `last` holds the latest reported
    figures (training, and validation when it ran at that step)."""

    step: int = 0
    tokens_seen: int = 0
    last: Dict[str, float] = field(default_factory=dict)

    def state_dict(self) -> Dict[str, int]:
        return {"step": self.step, "tokens_seen": self.tokens_seen}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]


@dataclass
class StepResult:
    tokens: int  # input tokens of the step over all ranks (for throughput), also when it was dropped
    taken: bool  # False: dropped at a reporting step for a non-finite loss (train/nonfinite.py)
    figures: Optional[Dict[str, float]] = None  # loss, grad norm, lr, statistics: at reporting steps only
