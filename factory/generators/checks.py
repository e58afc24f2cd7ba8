"""Checking a spec against the generator families it names.

`factory.spec` validates a spec's structure on its own (it sits below the
generators); this adds what only the families know: the kind exists, its `params`
match its `Params` model, it can draw the spec's classes, and families that
translate real images have references. Every problem is reported as
`field: reason`, all at once, like the spec's own errors.

A family may also check what its params point at (data sets, reference folders)
with a classmethod `check_resources(params, spec, where, checkpoint) -> [(field, reason)]`;
it runs only when `check_uris` is true (a cluster may see URIs a laptop does not).
A family whose need for references depends on its params says so with a
classmethod `needs_references(params) -> bool` (else its `uses_references`), and
one whose params name things relative to the spec (a bare `NAME@VERSION`) resolves
them here, on the driver, with `prepare_params(params, spec) -> params`.
"""

from __future__ import annotations

from factory.generators.base import generator_class
from factory.generators.procedural.fit import fitted_domain
from factory.generators.references import background_uris, qualify
from factory.spec import DatasetSpec
from factory.spec.errors import SpecError
from factory.storage.uri import StorageError


def check_spec(spec: DatasetSpec, source: str = "<spec>", check_uris: bool = True) -> DatasetSpec:
    """Raise `SpecError` listing every generator problem; fill `params.references`
    from `domain.references` for families that use references. Returns the spec."""
    problems: list[tuple[str, str]] = []
    if spec.domain.style == "fit" and spec.domain.fitted is None and check_uris:
        problems += _fit_domain(spec)
    for gi, g in enumerate(spec.generators):
        where = f"generators[{gi}]"
        try:
            cls = generator_class(g.kind)
        except ValueError as e:
            problems.append((f"{where}.kind", str(e)))
            continue
        param_problems = cls.Params.check(g.params)
        params_ok = not param_problems
        problems += [(f"{where}.params.{loc}" if loc else f"{where}.params", msg) for loc, msg in param_problems]
        needs = getattr(cls, "needs_references", None)
        uses_references = needs(g.params) if needs is not None else cls.uses_references
        if uses_references and not g.params.get("references"):
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
        prepare = getattr(cls, "prepare_params", None)
        if params_ok and prepare is not None:
            g.params = prepare(dict(g.params), spec)
        check = getattr(cls, "check_resources", None)
        if check_uris and params_ok and check is not None and g.weight > 0:
            problems += check(g.params, spec, where, g.checkpoint)
    if problems:
        raise SpecError(source, problems)
    return spec


def _fit_domain(spec: DatasetSpec) -> list[tuple[str, str]]:
    """`domain.style: fit`: estimate the style from the references, in place (the one
    place the run, `factory plan` and `factory preview` all pass through)."""
    if not spec.domain.references:
        return [("domain.references", "style: fit estimates the style from real defect-free images of the line: list them here")]
    try:
        uris = background_uris([qualify(r, spec.output.uri) for r in spec.domain.references])
        if not uris:
            return [("domain.references", f"no defect-free images in {spec.domain.references} to fit the style to")]
        spec.domain = fitted_domain(spec.domain, uris)
    except (FileNotFoundError, ValueError, StorageError) as e:
        return [("domain.references", str(e))]
    return []
