"""Where the real public configs used as explicit examples live.

They are copies of ``../shared/real_configs/`` kept inside the package, so a clean clone (CI) and an
installed convcheck have them without the workplace's shared folder.
"""
from pathlib import Path

REAL_CONFIGS = Path(__file__).resolve().parent / "real_configs"
