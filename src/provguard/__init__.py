"""provguard: record where user data came from and enforce what it may be used for.

The curated public API lives here; everything else is importable from its module but may change.
"""

__version__ = "0.1.0"
