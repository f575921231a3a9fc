"""`--help` of the project's commands, written from the typed configs' own field comments (the comment at
the end of a field's line, else the comment lines right above it), so the help never drifts from the code.

A Hydra command's YAML sets `hydra.help.template: ${app_help:}` and its main module calls `install_help`
before `@hydra.main` runs: its help then lists its own groups (not every folder of configs/), its options
with the values this command line composes and their meanings, and its common command lines. Launchers
with argparse put `options_text` in their epilog.
"""

import ast
import dataclasses
import functools
import inspect
import io
import textwrap
import tokenize
import typing
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

from common.paths import CONFIGS_DIR

KEY_WIDTH = 38  # the column where an option's meaning starts
WIDTH = 118  # lines are wrapped to this


@functools.lru_cache(maxsize=None)
def field_comments(cls: type) -> Dict[str, str]:
    """{field: its comment} for the fields a dataclass declares itself (not its bases')."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    comments = {token.start[0]: token.string.lstrip("#").strip()
                for token in tokenize.generate_tokens(io.StringIO(source).readline) if token.type == tokenize.COMMENT}
    found = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        trailing = [comments[n] for n in range(node.lineno, node.end_lineno + 1)
                    if n in comments and not lines[n - 1].lstrip().startswith("#")]
        above, n = [], node.lineno - 1
        while n >= 1 and lines[n - 1].lstrip().startswith("#"):
            above.insert(0, comments[n])
            n -= 1
        text = " ".join(trailing or above)
        if text:
            found[node.target.id] = text
    return found


def comment_of(cls: type, name: str) -> str:
    for klass in cls.__mro__:
        if dataclasses.is_dataclass(klass) and name in field_comments(klass):
            return field_comments(klass)[name]
    return ""


def dataclass_of(annotation: Any) -> Optional[type]:
    """The dataclass a field holds (also as Optional[...]; not inside a list or dict), else None."""
    if dataclasses.is_dataclass(annotation):
        return annotation
    if typing.get_origin(annotation) is typing.Union:
        return next((arg for arg in typing.get_args(annotation) if dataclasses.is_dataclass(arg)), None)
    return None


def default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else None


def value_of(values: Any, name: str) -> Any:
    """A field's value in a composed config (a DictConfig) or a config object."""
    if isinstance(values, DictConfig):
        return OmegaConf.select(values, name, default=None, throw_on_resolution_failure=False)
    return getattr(values, name, None)


def show(value: Any) -> str:
    """A value as one writes it on the command line; a table (a dict) by its keys."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=False)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value if value else "''"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: ..." if isinstance(v, dict) else f"{key}: {show(v)}" for key, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return str(value)


def option_rows(cls: type, values: Any = None, prefix: str = "") -> List[tuple]:
    """(key, value, meaning) for every field of `cls`, nested dataclasses flattened into dotted keys;
    values from `values` (a composed config or a config object) where given, else the defaults. Deprecated fields are left out."""
    rows = []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        meaning = comment_of(cls, field.name)
        if meaning.lower().startswith("deprecated"):
            continue
        value = default_of(field) if values is None else value_of(values, field.name)
        inner = dataclass_of(hints[field.name])
        if inner is not None and (value is not None or values is None):
            rows += option_rows(inner, value if values is not None else None, f"{prefix}{field.name}.")
        else:
            rows.append((f"{prefix}{field.name}", show(value), meaning))
    return rows


def options_text(cls: type, values: Any = None, prefix: str = "") -> str:
    lines = []
    for key, value, meaning in option_rows(cls, values, prefix):
        left = f"  {key}={value}"
        left = left if len(left) <= WIDTH else left[: WIDTH - 3] + "..."
        if not meaning:
            lines.append(left)
            continue
        wrapped = textwrap.wrap(meaning, WIDTH - KEY_WIDTH)
        if len(left) >= KEY_WIDTH:
            lines.append(left)
        else:
            lines.append(f"{left:<{KEY_WIDTH}}{wrapped.pop(0)}")
        lines += [" " * KEY_WIDTH + line for line in wrapped]
    return "\n".join(lines)


def group_text(groups: Sequence[str], choices: Dict[str, str]) -> str:
    lines = []
    for group in groups:
        names = sorted(path.stem for path in (CONFIGS_DIR / group).glob("*.yaml"))
        chosen = f" (this command: {choices[group]})" if choices.get(group) else ""
        lines += textwrap.wrap(f"{group}: {', '.join(names)}{chosen}", WIDTH, initial_indent="  ",
                               subsequent_indent="    ", break_on_hyphens=False)
    return "\n".join(lines)


def help_text(title: str, usage: str, examples: Sequence[str], groups: Sequence[str], schema: type,
              values: Any = None, choices: Optional[Dict[str, str]] = None, notes: str = "") -> str:
    parts = [title, "", f"Usage: {usage}", "", "Common command lines:", *[f"  {e}" for e in examples]]
    if groups:
        parts += ["", "Groups (GROUP=NAME picks a preset from configs/GROUP/):", group_text(groups, choices or {})]
    parts += ["", "Options (KEY=VALUE; the values this command line composes):", options_text(schema, values)]
    if notes:
        parts += ["", notes]
    return "\n".join(parts)


def install_help(title: str, usage: str, examples: Sequence[str], groups: Sequence[str], schema: type) -> None:
    """The `--help` of the Hydra command about to run (its YAML's hydra.help.template is ${app_help:})."""

    def resolve(*, _root_: DictConfig) -> str:
        choices = OmegaConf.to_container(_root_.hydra.runtime.choices) if "hydra" in _root_ else {}
        text = help_text(title, usage, examples, groups, schema, _root_, choices,
                         "Hydra's own flags: --hydra-help; --cfg job prints the whole composed config.")
        return text.replace("$", "$$")  # Hydra fills the template with string.Template

    OmegaConf.register_new_resolver("app_help", resolve, replace=True)
