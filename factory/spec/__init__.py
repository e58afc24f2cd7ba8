"""The dataset spec: YAML in, a validated `DatasetSpec` out."""

from factory.spec.errors import SpecError
from factory.spec.load import load_spec, parse_spec, spec_from_dict
from factory.spec.model import DatasetSpec

__all__ = ["DatasetSpec", "SpecError", "load_spec", "parse_spec", "spec_from_dict"]
