"""Non-finite steps (a NaN or inf loss or gradient norm), handled without waiting for the device.

The host reads a step's loss only when it reports it (a logging step: trainer.log_every, the last step).
- At a reporting step the figures are on the host anyway: a non-finite step is dropped there, its update
  not applied and its step number not used (the next batch tries the same step again), as it always was.
- Between reporting steps nothing waits for the device: the fused AdamW skips a non-finite update on the
  device (its `found_inf` argument, the mechanism of torch.amp.GradScaler: parameters, moments and the
  step count stay as they were), the step number is used, and device-side counters keep what happened.
  The next reporting step reads them, warns, and applies the policy: trainer.nonfinite=stop stops the
  run there; skip stops once more than trainer.max_skipped steps came in a row.
Optimizers without found_inf (optim.implementation=foreach or loop) read every step's loss on the host.
"""

import math

import torch


class NonFiniteLoss(RuntimeError):
    pass


class NonFiniteGuard:
    def __init__(self, policy: str, max_skipped: int, device: torch.device, say):
        if policy not in ("skip", "stop"):
            raise ValueError(f"trainer.nonfinite={policy!r}; use skip or stop")
        self.policy, self.max_skipped, self.say = policy, max_skipped, say
        self.in_a_row = torch.zeros((), dtype=torch.long, device=device)  # skipped steps in a row, both paths
        self.since_report = torch.zeros((), dtype=torch.long, device=device)  # skipped on the device
        self.last_step = torch.zeros((), dtype=torch.long, device=device)  # the latest of those

    @staticmethod
    def on_device(optimizer: torch.optim.Optimizer) -> bool:
        """Whether the optimizer can skip an update on the device (fused Adam/AdamW)."""
        return getattr(optimizer, "_step_supports_amp_scaling", False)

    def step_on_device(self, optimizer: torch.optim.Optimizer, bad: torch.Tensor, step: int) -> None:
        """optimizer.step() that applies nothing when `bad` (a 0-dim bool tensor) is true; no host sync."""
        self.since_report += bad
        self.in_a_row.copy_((self.in_a_row + 1) * bad)
        self.last_step.copy_(torch.where(bad, step, self.last_step))
        optimizer.found_inf = bad.float()
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf

    def report(self) -> None:
        """At a reporting step: what the device skipped since the last one, and the policy's verdict."""
        skipped = int(self.since_report)
        if not skipped:
            return
        self.since_report.zero_()
        self.check(f"{skipped} non-finite step(s) since the last report, the latest at step {int(self.last_step)}, "
                   "had their updates skipped")

    def skip_on_host(self, loss: float, grad_norm: float, step: int) -> None:
        """A reporting step whose loss or gradient norm is not finite: count it, warn, apply the policy."""
        self.in_a_row += 1
        what = "loss" if not math.isfinite(loss) else "gradient norm"
        self.check(f"non-finite {what} at step {step} (loss {loss}, grad norm {grad_norm})", dropped=True)

    def finite_on_host(self) -> None:
        self.in_a_row.zero_()

    def check(self, what: str, dropped: bool = False) -> None:
        in_a_row = int(self.in_a_row)
        if self.policy == "stop" or in_a_row > self.max_skipped:
            raise NonFiniteLoss(f"{what}; stopping (trainer.nonfinite={self.policy}, {in_a_row} in a row). Lower "
                                "optim.lr, raise optim.warmup_steps, or check the data")
        self.say(f"warning: {what}; " + (f"the step is skipped ({in_a_row} in a row)" if dropped else "training goes on"))
