"""Mixture of experts: router.py (scores, top-k choice, balancing losses and bias), experts.py (routed
experts as 3-D weights on grouped matmuls), layer.py (the `moe` feed-forward), metrics.py (load
statistics for logging). Expert parallelism lives outside the model, in train/parallel/expert.py."""
