from __future__ import annotations

import sys
from pathlib import Path

# the shared hypothesis strategies live beside the tests (policy_gen.py)
sys.path.insert(0, str(Path(__file__).resolve().parent))
