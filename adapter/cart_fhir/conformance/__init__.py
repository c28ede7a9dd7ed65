"""Profile conformance: load the published FHIR package and check resources against its snapshots."""

from .checker import Checker
from .issue import Issue
from .package import Package, default_package_dir

__all__ = ["Checker", "Issue", "Package", "default_package_dir"]
