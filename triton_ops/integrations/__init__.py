"""Integrations with model libraries: :func:`patch_model` / :func:`unpatch_model` for Hugging Face
transformers models (see docs/integrations.md)."""

from .hf import patch_model, unpatch_model
from .report import PatchedPart, PatchReport, SkippedPart

__all__ = ["patch_model", "unpatch_model", "PatchReport", "PatchedPart", "SkippedPart"]
