"""Task-level inference gateway (QA, detection, classification) in front of Triton."""

from gateway.app import create_app
from gateway.settings import Settings

__all__ = ["Settings", "create_app"]
