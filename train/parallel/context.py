"""Context parallelism: each sequence split over the `cp` ranks (work in progress)."""

from train.model.config import ModelConfig

CP_MIXERS = ("softmax_attention",)


def context_parallel_problems(model: ModelConfig, cp: int) -> list[str]:
    """Why `model` cannot split its sequences over `cp` ranks (one line each); [] if it can."""
    return [f"model.mixers.{name}: kind {model.mixers[name].kind} is not supported with parallel.cp={cp} "
            f"(supported: {', '.join(CP_MIXERS)})"
            for name in sorted(set(model.layer_mixers)) if model.mixers[name].kind not in CP_MIXERS]
