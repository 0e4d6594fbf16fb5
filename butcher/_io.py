"""Reading tableaux from TOML and JSON files, as data only."""

from __future__ import annotations

import errno
import json
import os
import tomllib
from pathlib import Path

from ._parse import MAX_DIGITS, TableauError
from ._tableau import ButcherTableau

__all__ = ["MAX_FILE_BYTES", "MAX_NESTING", "load", "dumps_toml", "names_a_file"]

MAX_FILE_BYTES = 1 << 20


def names_a_file(text: str) -> bool:
    """Whether ``text`` names a tableau file rather than a catalogue method: a ``.toml``/``.json``
    name, a path with a separator, or anything that exists there (a symbolic link included)."""
    return Path(text).suffix.lower() in (".toml", ".json") or os.sep in text or os.path.lexists(text)


def load(path, exact: bool = True) -> ButcherTableau:
    """Read a tableau from a ``.toml`` or ``.json`` file with keys ``A``, ``b`` and optionally
    ``c``, ``b_hat``, ``name``, ``description``, ``reference``, ``parameters``, ``constants``.
    Entries are numbers or exact strings (``"1/3"``, ``"sqrt(3)/6"``, ``"cos(pi/18)"``,
    ``'root("x^3 - 3*x^2 + 3/2*x - 1/6", 0.4358)'``); nothing in the file is ever evaluated as
    code. ``exact=False``: the entries rounded to 50 digits, for the numerical analysis of a
    tableau too large for the exact one.

    Every problem raises :class:`TableauError` with the file name and the offending entry.
    """
    path = Path(path)
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise TableauError(f"{path}: a loop of symbolic links, not a tableau file") from None
    if path.is_dir():
        raise TableauError(f"{path}: is a directory, not a tableau file")
    if path.exists() and not path.is_file():
        raise TableauError(f"{path}: not a regular file (a device or a pipe); give a .toml or .json file")
    if not path.is_file():
        raise TableauError(f"{path}: no such file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise TableauError(f"{path}: file larger than {MAX_FILE_BYTES} bytes; not a tableau")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of the text
    except (OSError, UnicodeDecodeError) as err:
        raise TableauError(f"{path}: cannot read: {err}") from None
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise TableauError(f"{path}: unknown file type {suffix!r} (use .toml or .json)")
    _check_structure(text, path)
    try:
        data = tomllib.loads(text) if suffix == ".toml" else json.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise TableauError(f"{path}: invalid TOML: {err}") from None
    except json.JSONDecodeError as err:
        raise TableauError(f"{path}: invalid JSON: {err}") from None
    except (ValueError, RecursionError) as err:  # what the scan above cannot foresee: one line all the same
        raise TableauError(f"{path}: cannot read: {str(err)[:200]}") from None
    if isinstance(data, dict) and "name" not in data:  # a file's tableau is named after the file
        data = {**data, "name": path.stem}
    return ButcherTableau.from_dict(data, source=str(path), exact=exact)


MAX_NESTING = 16  # arrays and tables inside one another (a tableau needs 3)


def _check_structure(text: str, path) -> None:
    """Refuse, before parsing, what would make the TOML or JSON parser recurse without end or
    convert a number without end: arrays nested past ``MAX_NESTING``, and numbers longer than the
    parser's own digit budget (``MAX_DIGITS``)."""
    depth, quote, run, escaped, comment = 0, None, 0, False, False
    for char in text:
        if comment:
            comment = char != "\n"
            continue
        if quote is not None:
            if escaped:
                escaped = False
            elif char == "\\" and quote == '"':
                escaped = True
            elif char == quote:
                quote = None
            continue
        if char == "#":  # a TOML comment (JSON has none)
            comment = True
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
            if depth > MAX_NESTING:
                raise TableauError(f"{path}: arrays or tables nested more than {MAX_NESTING} deep; not a tableau")
        elif char in "]}":
            depth -= 1
        run = run + 1 if char.isdigit() else 0
        if run > MAX_DIGITS:
            raise TableauError(f"{path}: a number with more than {MAX_DIGITS} digits")


def _toml_value(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # constants: names are identifiers, bare TOML keys
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string


def dumps_toml(tableau: ButcherTableau) -> str:
    """The tableau as TOML text that :func:`load` reads back to the same numbers."""
    lines = []
    for key, value in tableau.to_dict().items():
        if key == "constants" and "theta" in value:
            lines.append("# each entry is a polynomial in theta, a generator of the number field of them all")
        if key == "A":
            rows = ",\n".join("    " + _toml_value(row) for row in value)
            lines.append(f"A = [\n{rows},\n]")
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"
