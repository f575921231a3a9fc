"""Everything about ranks, applied to the model and the loop from outside:

    world.py      the process group and the device (init, teardown, the elastic restart store)
    dims.py       ParallelDims: the one owner of every device mesh and process group
    fsdp.py       parallelize(): pipeline stages, expert, tensor and context parallelism, activation
                  checkpointing, compile, FSDP2; read_local_shards()
    expert.py     expert parallelism: all-to-all dispatch, expert sharding, views of all experts
    tensor.py     tensor + sequence parallelism: DTensor plans by module name
    context.py    context parallelism: zig-zag windows, all-gather-KV attention
    pipeline.py   pipeline parallelism: the stages split from the model, their schedule, the start-up checks
    memory.py     the per-device memory of a layout (the inspector's "will it fit")
    grad_norm.py  the global gradient norm over every mesh, and clipping
"""
