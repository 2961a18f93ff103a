"""Realistic sandbox platform data (Douyin/Duoshan over WeChat/QQ login) on real SNAP graphs.

Public API: :func:`build_platform`, :class:`Platform`, :class:`SandboxParams`; the table schemas
live in :mod:`provguard.sandbox.schema`. See ``docs/sandbox.md`` for the distributions.
"""

from provguard.sandbox.params import SandboxParams
from provguard.sandbox.platform import Platform, build_platform

__all__ = ["Platform", "SandboxParams", "build_platform"]
