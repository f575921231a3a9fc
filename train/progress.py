"""Where the loop stands: the trainer's progress (checkpointed) and what one step produced."""

from dataclasses import dataclass, field
from typing import Dict, Optional


@dataclass
class Progress:
    """Optimizer steps taken, tokens trained on, and the run of skipped steps; `last` holds the latest
    figures (training, and validation when it ran at that step). Checkpointed: step and tokens."""

    step: int = 0
    tokens_seen: int = 0
    skipped_in_a_row: int = 0
    last: Dict[str, float] = field(default_factory=dict)

    def state_dict(self) -> Dict[str, int]:
        return {"step": self.step, "tokens_seen": self.tokens_seen}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]


@dataclass
class StepResult:
    tokens: int  # input tokens of the step over all ranks (for throughput), also when it was skipped
    figures: Optional[Dict[str, float]]  # loss, grad norm, lr, statistics; None: skipped (non-finite)

    @property
    def taken(self) -> bool:
        return self.figures is not None
