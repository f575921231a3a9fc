"""Everything about ranks, applied to the model and the loop from outside:

    world.py      the process group and the device (init, teardown, the elastic restart store)
    dims.py       ParallelDims: the one owner of every device mesh and process group
    fsdp.py       parallelize(): expert parallelism, activation checkpointing, compile, FSDP2; read_local_shards()
    expert.py     expert parallelism: all-to-all dispatch, expert sharding, views of all experts
    grad_norm.py  the global gradient norm over every mesh, and clipping
"""
