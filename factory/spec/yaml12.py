"""The YAML loader specs are read with: PyYAML's safe loader with YAML 1.2 core-schema
rules, so `1:30` or `no` never turn silently into 90 or false."""

from __future__ import annotations

import math
import re
from typing import Any, Hashable

import yaml

from factory.spec.errors import preview


class SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader read with YAML 1.2 core-schema rules, where 1.1 silently
    changes values: `1:30` (90), `yes`/`no`/`on`/`off` (booleans) and dates stay text.
    Refused: a leading-zero integer (`017`: 15 in 1.1, 17 in 1.2), a complex key
    (`? [a, b]`) and a duplicate key (YAML would silently keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise yaml.constructor.ConstructorError(
                    None, None, "a key must be plain text, not a list or mapping (a complex key `? ...`)",
                    key_node.start_mark)
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {preview(key)} (first at line {seen[key].start_mark.line + 1})",
                    key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        text = self.construct_scalar(node)
        if _LEADING_ZERO.match(text):
            raise yaml.constructor.ConstructorError(
                None, None, f"{preview(text)} is ambiguous (octal in YAML 1.1, decimal in 1.2): "
                f"write {int(text)} for the number, 0o{text.lstrip('+-0') or '0'} for octal, or quote it for text",
                node.start_mark)
        return int(text, 0)

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        text = self.construct_scalar(node).lower()
        if text.endswith(".inf"):
            return -math.inf if text.startswith("-") else math.inf
        return math.nan if text == ".nan" else float(text)


_LEADING_ZERO = re.compile(r"^[-+]?0[0-9]+$")
_YAML_1_1_ONLY = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
                  "tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value"}
SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _YAML_1_1_ONLY]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _tag, _pattern, _first in [  # the YAML 1.2 core schema
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    ("float", r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
              r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$", "-+.0123456789"),
]:
    SpecLoader.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", re.compile(_pattern), list(_first))
SpecLoader.add_constructor("tag:yaml.org,2002:int", SpecLoader.construct_yaml_int)
SpecLoader.add_constructor("tag:yaml.org,2002:float", SpecLoader.construct_yaml_float)
