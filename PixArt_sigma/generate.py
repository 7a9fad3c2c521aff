"""Generate the official TGATE README's pixart_sigma example with TGATE: `cd PixArt_sigma && python generate.py --help`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for `common`

from common.cli import generate_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(generate_main("pixart_sigma"))
