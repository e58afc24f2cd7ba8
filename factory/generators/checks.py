"""Checking a spec against the generator families it names.

`factory.spec` validates a spec's structure on its own (it sits below the
generators); this adds what only the families know: the kind exists, its `params`
match its `Params` model, it can draw the spec's classes, and families that
translate real images have references. Every problem is reported as
`field: reason`, all at once, like the spec's own errors.
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import ValidationError

from factory.generators.base import generator_class
from factory.spec import DatasetSpec
from factory.spec.load import SpecError, describe_error


def check_spec(spec: DatasetSpec, source: str = "<spec>") -> DatasetSpec:
    """Raise `SpecError` listing every generator problem; fill `params.references`
    from `domain.references` for families that use references. Returns the spec."""
    problems: list[tuple[str, str]] = []
    for gi, g in enumerate(spec.generators):
        where = f"generators[{gi}]"
        try:
            cls = generator_class(g.kind)
        except ValueError as e:
            problems.append((f"{where}.kind", str(e)))
            continue
        try:
            cls.Params.model_validate(g.params)
        except ValidationError as e:
            problems += [_param_problem(f"{where}.params", err, cls.Params) for err in e.errors()]
        if cls.uses_references and not g.params.get("references"):
            if spec.domain.references:
                g.params = {**g.params, "references": list(spec.domain.references)}
            else:
                problems.append(("domain.references",
                                 f"{where} ({g.kind}) translates real defect-free images of the target line: list them "
                                 f"here (folders or URIs) or set {where}.params.references"))
        if cls.classes is not None and g.weight > 0:
            for i, d in enumerate(spec.defects):
                if d.weight > 0 and d.class_name not in cls.classes:
                    problems.append((f"defects[{i}].class",
                                     f"generator {where} ({g.kind}) cannot draw {d.class_name!r}; "
                                     f"it draws {', '.join(cls.classes)}"))
    if problems:
        raise SpecError(source, problems)
    return spec


def _param_problem(prefix: str, err: dict[str, Any], model) -> tuple[str, str]:
    loc, msg = describe_error(err)
    if err["type"] == "extra_forbidden":
        key = str(err["loc"][-1])
        known = sorted(model.model_fields)
        hint = difflib.get_close_matches(key, known, n=1)
        msg = f"unknown key {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else
                                         f"; allowed keys: {', '.join(known) or 'none'}")
    return (f"{prefix}.{loc}" if loc else prefix), msg
