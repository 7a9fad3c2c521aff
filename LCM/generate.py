"""Generate the paper's LCM examples with TGATE: `cd LCM && python generate.py --base sdxl|pixart`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for `common`

from common.cli import generate_main  # noqa: E402
from LCM.pipeline import LCM_MODELS  # noqa: E402

if __name__ == "__main__":
    sys.exit(generate_main(LCM_MODELS, variant_flag="--base"))
