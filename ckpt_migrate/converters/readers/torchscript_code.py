"""Class declarations of a TorchScript archive, read as text from ``code/`` (never executed).

TorchScript writes every module class as Python-like source whose header declares the slots:
``__parameters__ = ["weight", "bias", ]``, ``__buffers__ = [...]``, then ``name : Type`` lines
(``__annotations__["0"] = Type`` for numeric names). Only these header lines are parsed, with
regular expressions; method bodies are ignored. Torch-free.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_CLASS = re.compile(r"^class ([A-Za-z_][A-Za-z0-9_]*)\(([A-Za-z_][A-Za-z0-9_.]*)\):\s*$")
_SLOT_LIST = re.compile(r"^  (__parameters__|__buffers__) = \[(.*)\]\s*$")
_ATTRIBUTE = re.compile(r"^  ([A-Za-z_][A-Za-z0-9_]*) : (.+?)\s*$")
_ANNOTATION = re.compile(r"^  __annotations__\[\"([^\"]*)\"\] = (.+?)\s*$")
_QUOTED = re.compile(r"\"([^\"]*)\"")
MAX_CODE_BYTES = 64 << 20
"""Code files larger than this in total are not parsed (the declarations are then unknown)."""


@dataclass
class ClassDecl:
    """One class of the archive: its qualified name, base, and declared slots in order."""

    name: str
    base: str
    parameters: list[str] = field(default_factory=list)
    buffers: list[str] = field(default_factory=list)
    attributes: dict[str, str] = field(default_factory=dict)

    @property
    def is_module(self) -> bool:
        return self.base == "Module"


def qualified_prefix(path: str) -> str | None:
    """The qualified-name prefix of a code file: ``__torch__/torch/nn/conv.py`` → ``__torch__.torch.nn.conv``.

    Args:
        path: the file's path below the archive's ``code/`` folder.

    Returns:
        The dotted prefix, or None for files that are not class sources (debug pickles, others).
    """
    if not path.endswith(".py") or not path.startswith("__torch__"):
        return None
    return path[: -len(".py")].replace("/", ".")


def parse_declarations(files: dict[str, str]) -> dict[str, ClassDecl]:
    """Every class declared in the archive's code files, by qualified name.

    Args:
        files: path below ``code/`` → the file's text.

    Returns:
        Qualified class name (as the pickle names it, ``__torch__.a.b.Class``) → its declaration.
    """
    out: dict[str, ClassDecl] = {}
    for path, text in files.items():
        prefix = qualified_prefix(path)
        if prefix is None:
            continue
        current: ClassDecl | None = None
        for line in text.splitlines():
            match = _CLASS.match(line)
            if match:
                current = ClassDecl(f"{prefix}.{match.group(1)}", match.group(2))
                out[current.name] = current
                continue
            if current is None or not line.startswith("  ") or line.startswith("   "):
                continue
            if (slots := _SLOT_LIST.match(line)) is not None:
                names = _QUOTED.findall(slots.group(2))
                (current.parameters if slots.group(1) == "__parameters__" else current.buffers).extend(names)
            elif (annotation := _ANNOTATION.match(line)) is not None:
                current.attributes[annotation.group(1)] = annotation.group(2)
            elif (attribute := _ATTRIBUTE.match(line)) is not None:
                current.attributes[attribute.group(1)] = attribute.group(2)
    return out
