"""Name -> class tables for token mixers and feed-forwards.

A new block is one file with a class decorated by `@register_mixer("name")` (or `register_ffn`)
plus one import line in mixer/__init__.py (or ffn/__init__.py). Configs pick it with `kind: name`.
Every registered class is constructed as `cls(config, model_config, layer_idx)`.
"""

MIXERS: dict[str, type] = {}
FFNS: dict[str, type] = {}


def _register(table: dict, what: str, name: str):
    def decorator(cls):
        if name in table:
            raise ValueError(f"{what} {name!r} is registered twice ({table[name].__name__} and {cls.__name__})")
        table[name] = cls
        return cls

    return decorator


def register_mixer(name: str):
    return _register(MIXERS, "mixer", name)


def register_ffn(name: str):
    return _register(FFNS, "feed-forward", name)


def lookup(table: dict, what: str, name: str) -> type:
    if name not in table:
        raise ValueError(f"unknown {what} kind {name!r}; registered: {sorted(table)}")
    return table[name]
