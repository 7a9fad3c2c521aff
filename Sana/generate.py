"""Generate an image with TGATE on Sana: `cd Sana && python generate.py --help`.

Defaults: the model card's (see common/dit_models.py), gate at 40% of the steps until eval/observation.py on real
weights says better. `--tiny` runs tiny random components offline (the image is noise).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for `common`

from common.cli import generate_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(generate_main("sana"))
