"""mkdocs hooks: the parts of the site written from the code at build time, and checks that the
hand-written pages name only commands, options and config keys that exist.

A page marks where a generated part goes with a comment on a line of its own:
``<!-- stillroom:cli -->`` (every command of the typer app, with its arguments and options) and
``<!-- stillroom:config -->`` (every config key of the pydantic models: type, bounds, default,
description). ``benchmarks.md`` is bench/README.md with its links made site links. A problem is a
warning, so ``mkdocs build --strict`` fails on it: a renamed command or key breaks the build, not
silently the docs.
"""

from __future__ import annotations

import logging
import re
import shlex
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import typer
import typer.core
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from stillroom.flows._cli import app
from stillroom.flows._config import Config

log = logging.getLogger("mkdocs.hooks.stillroom")

ROOT = Path(__file__).resolve().parent.parent
CLI_MARK = "<!-- stillroom:cli -->"
CONFIG_MARK = "<!-- stillroom:config -->"
# bench/README.md links to pages of this site as files of the repository (../docs/...)
DOCS_PREFIX = "../docs/"


def on_files(files: Files, config: MkDocsConfig) -> Files:
    files.append(File.generated(config, "benchmarks.md", content=benchmarks()))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    where = page.file.src_uri
    for problem in check_commands(markdown):
        log.warning("%s: %s", where, problem)
    if where == "reference/config.md":
        for problem in check_config_tables(markdown):
            log.warning("%s: %s", where, problem)
    for mark, render in ((CLI_MARK, cli_reference), (CONFIG_MARK, config_reference)):
        if mark in markdown:
            markdown = markdown.replace(mark, render())
    return markdown


# --- benchmarks ------------------------------------------------------------------------------


def benchmarks() -> str:
    text = (ROOT / "bench" / "README.md").read_text()
    for link in re.findall(r"\]\(([^)#][^)]*)\)", text):
        if link.startswith(("http://", "https://")):
            continue
        if not link.startswith(DOCS_PREFIX):
            log.warning("bench/README.md: no page of the site for its link %r", link)
            continue
        text = text.replace(f"]({link})", f"]({link.removeprefix(DOCS_PREFIX)})")
    return text


# --- the CLI ---------------------------------------------------------------------------------


def commands() -> Iterator[tuple[str, Any]]:
    """Every command of the app, depth first, as (its full name, its click command)."""
    root = typer.main.get_command(app)

    def walk(name: str, command: Any) -> Iterator[tuple[str, Any]]:
        yield name, command
        for sub_name, sub in getattr(command, "commands", {}).items():
            yield from walk(f"{name} {sub_name}", sub)

    yield from walk("stillroom", root)


def _context(name: str, command: Any) -> Any:
    parent = None
    *groups, last = name.split()
    for group in groups:
        parent = typer.Context(typer.main.get_command(app), info_name=group, parent=parent)
    return typer.Context(command, info_name=last, parent=parent)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", r"\|")


def cli_reference() -> str:
    listed = [(n, c) for n, c in commands() if n != "stillroom"]
    lines = ["| command | what it does |", "|---|---|"]
    for name, command in listed:
        anchor = name.replace(" ", "-")
        summary = (command.help or "").split("\n\n")[0]
        lines.append(f"| [`{name}`](#{anchor}) | {_cell(summary)} |")
    root = typer.main.get_command(app)
    lines += ["", "### stillroom", "", *_command_section("stillroom", root)]
    for name, command in listed:
        lines += ["", f"### {name} {{#{name.replace(' ', '-')}}}", ""]
        lines += _command_section(name, command)
    return "\n".join(lines) + "\n"


def _command_section(name: str, command: Any) -> list[str]:
    ctx = _context(name, command)
    params = [p for p in command.get_params(ctx) if p.name != "help" and not p.hidden]
    lines = ["```", _usage(name, command, params), "```", ""]
    if command.help:
        lines += [_paragraphs(command.help), ""]
    rows = []
    for param in params:
        if isinstance(param, typer.core.TyperArgument):
            names, kind = param.name.upper(), "argument"
        else:
            names, kind = ", ".join(sorted(param.opts, key=len)), "option"
        value = _value_kind(param.get_help_record(ctx)[0]) + (
            ", repeatable" if param.multiple else ""
        )
        default = "required" if param.required else _default(param.default)
        rows.append(f"| `{names}` | {kind} | {value} | {default} | {_cell(param.help or '')} |")
    if rows:
        lines += ["| name | | value | default | meaning |", "|---|---|---|---|---|", *rows]
    return lines


def _usage(name: str, command: Any, params: list[Any]) -> str:
    words = [name, "[OPTIONS]"]
    for param in params:
        if isinstance(param, typer.core.TyperArgument):
            words.append(param.name.upper() if param.required else f"[{param.name.upper()}]")
    if getattr(command, "commands", None):
        words.append("COMMAND [ARGS]...")
    return " ".join(words)


def _value_kind(record: str) -> str:
    found = re.search(r"<(.+)>$", record)
    if found is None:
        return "flag"
    return found.group(1).removeprefix("list[").removesuffix("]")


def _paragraphs(text: str) -> str:
    return "\n\n".join(" ".join(p.split()) for p in text.split("\n\n"))


def _default(value: Any) -> str:
    if value is None or value is False or value == [] or value == ():
        return ""
    return f"`{value}`"


def check_commands(markdown: str) -> Iterator[str]:
    """Each `stillroom ...` line of a code block names a real command, its options, and (in
    `--set KEY=VALUE`) a real config key."""
    known = dict(commands())
    for line in _code_lines(markdown):
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            yield f"cannot read the command line {line!r}"
            continue
        yield from _check_command(words, known)


def _code_lines(markdown: str) -> Iterator[str]:
    fence = None
    pending = ""
    for raw in markdown.splitlines():
        stripped = raw.strip()
        if stripped.startswith(("```", "~~~")):
            fence = None if fence else stripped[:3]
            pending = ""
            continue
        if not fence:
            continue
        line = pending + stripped
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        line = line.removeprefix("$ ")
        line = re.sub(r"^(\.venv/bin/|docker-compose run --rm worker )", "", line)
        if line.startswith("stillroom "):
            yield line


def _check_command(words: list[str], known: dict[str, Any]) -> Iterator[str]:
    name, rest = "stillroom", words[1:]
    while rest and rest[0] == "--debug":
        rest = rest[1:]
    while rest and f"{name} {rest[0]}" in known:
        name, rest = f"{name} {rest[0]}", rest[1:]
    command = known[name]
    if getattr(command, "commands", None):
        if rest and rest[0] != "...":
            yield f"`{name}` has no command {rest[0]!r}"
        return
    ctx = _context(name, command)
    options = {opt for p in command.get_params(ctx) for opt in (*p.opts, *p.secondary_opts)}
    for i, word in enumerate(rest):
        if word == "...":
            break
        option = word.split("=", 1)[0]
        if word.startswith("-") and option not in options and option != "--debug":
            yield f"`{name}` has no option {option}"
        if option == "--set" and i + 1 < len(rest):
            key = rest[i + 1].split("=", 1)[0]
            if not config_key_exists(key):
                yield f"`{name} --set {key}=...`: no such config key"


# --- the config ------------------------------------------------------------------------------


def _unwrap(annotation: Any) -> list[Any]:
    """The members of a union, with Annotated and Optional taken apart."""
    if get_origin(annotation) is Annotated:
        return _unwrap(get_args(annotation)[0])
    if get_origin(annotation) in (Union, types.UnionType):
        return [m for arg in get_args(annotation) for m in _unwrap(arg)]
    return [annotation]


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The config sections a field holds: a section, or the items of a list of sections."""
    found = []
    for member in _unwrap(annotation):
        if get_origin(member) is list:
            found += _models(get_args(member)[0])
        elif isinstance(member, type) and issubclass(member, BaseModel):
            found.append(member)
    return found


def config_key_exists(key: str) -> bool:
    """A dotted key (`teacher.price.input_per_1m`, `students.0.C`, `students[].kind`) names a
    field of the config."""
    sections: list[type[BaseModel]] = [Config]
    parts = key.replace("[]", "").split(".")
    for i, part in enumerate(parts):
        if part.isdigit() and i:
            continue  # an index into a list of sections
        fields = [m.model_fields[part] for m in sections if part in m.model_fields]
        if not fields:
            return False
        sections = [s for f in fields for s in _models(f.annotation)]
    return True


def check_config_tables(markdown: str) -> Iterator[str]:
    """The first cell of every hand-written table row names config keys that exist."""
    before = markdown.split(CONFIG_MARK)[0] if CONFIG_MARK in markdown else markdown
    for line in markdown[len(before) :].splitlines():
        if not line.startswith("| `"):
            continue
        cell = line.split(" | ")[0]
        for key in re.findall(r"`([^`]+)`", cell):
            key = key.split(":")[0].strip()
            if not config_key_exists(key):
                yield f"the config table names {key!r}, which is no config key"


def _type_name(annotation: Any) -> str:
    members = _unwrap(annotation)
    if len(members) > 1:
        return " or ".join(_type_name(m) for m in members)
    (member,) = members
    origin = get_origin(member)
    if member is type(None):
        return "null"
    if origin is Literal:
        return " or ".join(f"`{value}`" for value in get_args(member))
    if origin is list and _models(member):
        return "list[section]"
    if origin in (list, dict):
        inner = ", ".join(_type_name(a) for a in get_args(member))
        return f"{origin.__name__}[{inner}]"
    if isinstance(member, type) and issubclass(member, BaseModel):
        return "section"
    return getattr(member, "__name__", str(member))


_BOUNDS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<", "min_length": "length ≥"}


def _bounds(field: FieldInfo) -> str:
    found = []
    for item in field.metadata:
        for attr, sign in _BOUNDS.items():
            if getattr(item, attr, None) is not None:
                found.append(f"{sign} {getattr(item, attr)}")
        if getattr(item, "pattern", None):
            found.append(f"matches `{item.pattern}`")
    for member in get_args(field.annotation):  # a bound on one member of a union
        if get_origin(member) is Annotated:
            found.append(_bounds(FieldInfo.from_annotation(member)))
    return ", ".join(b for b in found if b)


def _show(value: Any) -> str:
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        return "`[" + ", ".join(_flow(v.model_dump(exclude_defaults=True)) for v in value) + "]`"
    if value == "":
        return '`""`'
    return f"`{_flow(value)}`"


def _flow(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    return str(value)


def _default_of(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return "(section)"
        return _show(value)
    if field.default is PydanticUndefined:
        return ""
    return _show(field.default)


def config_rows(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(section heading, table row) for every key of a config section and those beneath it."""
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        bounds = _bounds(field)
        kind = _type_name(field.annotation) + (f" ({bounds})" if bounds else "")
        row = (
            f"| `{key}` | {_cell(kind)} | {_cell(_default_of(field))} "
            f"| {_cell(field.description or '')} |"
        )
        yield prefix.rstrip(".") or "top level", row
        sections = _models(field.annotation)
        listed = get_origin(_unwrap(field.annotation)[0]) is list
        for section in sections:
            inner = f"{key}[]." if listed else f"{key}."
            if listed and "kind" in section.model_fields:
                kind_name = get_args(section.model_fields["kind"].annotation)[0]
                for _heading, sub in config_rows(section, inner):
                    yield f"{key}[] (kind: {kind_name})", sub
            else:
                yield from config_rows(section, inner)


def config_reference() -> str:
    tables: dict[str, list[str]] = {}
    for heading, row in config_rows(Config):
        tables.setdefault(heading, []).append(row)
    lines = []
    for heading, rows in tables.items():
        lines += [
            f"### {heading}",
            "",
            "| key | type | default | description |",
            "|---|---|---|---|",
        ]
        lines += [*rows, ""]
    return "\n".join(lines)
