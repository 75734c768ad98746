"""What :func:`~triton_ops.patch_model` did: the parts it replaced and the parts it left, with reasons."""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PatchedPart:
    """One replaced part: ``path`` (module path in the model), ``kind`` (``"attention"``, ``"layer"``,
    ``"norm"`` or ``"mlp"``), ``original`` (the Hugging Face class) and ``replacement`` (what runs now)."""

    path: str
    kind: str
    original: str
    replacement: str


@dataclass(frozen=True)
class SkippedPart:
    """One part left as it was, and why."""

    path: str
    kind: str
    original: str
    reason: str


@dataclass
class PatchReport:
    """The result of :func:`~triton_ops.patch_model`.

    ``replaced`` and ``skipped`` list every part the patcher recognised (attention modules, RMSNorms,
    gated MLPs) or that looked like one it could not take; ``str(report)`` summarises them, folding
    the per-layer entries (``model.layers.{0..27}.mlp``) into one line each.
    """

    model: str
    options: dict = field(default_factory=dict)
    replaced: list[PatchedPart] = field(default_factory=list)
    skipped: list[SkippedPart] = field(default_factory=list)

    def add_replaced(self, path: str, kind: str, original: str, replacement: str) -> None:
        self.replaced.append(PatchedPart(path, kind, original, replacement))

    def add_skipped(self, path: str, kind: str, original: str, reason: str) -> None:
        self.skipped.append(SkippedPart(path, kind, original, reason))

    def count(self, kind: str | None = None) -> int:
        """Number of replaced parts (of one kind, or all)."""
        return sum(1 for p in self.replaced if kind is None or p.kind == kind)

    def paths(self, kind: str | None = None, *, skipped: bool = False) -> list[str]:
        """Module paths of the replaced (or, with ``skipped=True``, the skipped) parts."""
        parts = self.skipped if skipped else self.replaced
        return [p.path for p in parts if kind is None or p.kind == kind]

    def __str__(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options.items())
        lines = [f"patch_model({self.model}{', ' + opts if opts else ''}): "
                 f"{len(self.replaced)} parts replaced, {len(self.skipped)} left unpatched"]
        if self.replaced:
            lines.append("replaced:")
            lines += _folded(self.replaced, lambda p: f"{p.original} -> {p.replacement}")
        if self.skipped:
            lines.append("left unpatched:")
            lines += _folded(self.skipped, lambda p: f"{p.original}: {p.reason}")
        return "\n".join(lines)


_INDEX = re.compile(r"\.(\d+)(?=\.|$)")
_KIND_ORDER = {"attention": 0, "layer": 1, "norm": 2, "mlp": 3}


def _folded(parts, describe) -> list[str]:
    """One line per (kind, path pattern, description); layer indices folded into ``{a..b}`` / ``{a,b}``;
    kinds in the order attention, layer, norm, mlp."""
    groups: OrderedDict[tuple, list[int]] = OrderedDict()
    for p in sorted(parts, key=lambda p: _KIND_ORDER.get(p.kind, len(_KIND_ORDER))):
        nums = _INDEX.findall(p.path)
        # Fold only the first index (the layer); deeper indices stay literal.
        pattern = _INDEX.sub(".{}", p.path, count=1) if nums else p.path
        groups.setdefault((p.kind, pattern, describe(p)), []).append(int(nums[0]) if nums else -1)
    width = max((len(k[1]) for k in groups), default=0) + 8
    out = []
    for (kind, pattern, desc), idx in groups.items():
        if "{}" not in pattern:
            path = pattern
        elif len(set(idx)) == 1:
            path = pattern.replace("{}", str(idx[0]))
        else:
            path = pattern.replace("{}", "{" + _ranges(idx) + "}")
        out.append(f"  {kind:<9} {path:<{width}} {desc}")
    return out


def _ranges(idx: list[int]) -> str:
    idx = sorted(set(idx))
    if len(idx) > 2 and idx == list(range(idx[0], idx[-1] + 1)):
        return f"{idx[0]}..{idx[-1]}"
    return ",".join(str(i) for i in idx)


__all__ = ["PatchReport", "PatchedPart", "SkippedPart"]
