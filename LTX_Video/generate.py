"""Generate a video with TGATE on LTX-Video: `cd LTX_Video && python generate.py --help`.

Defaults: the model card's example (704x480, 161 frames, 50 steps, guidance 3.0), gate 20 (40% of the steps,
until eval/observation.py on real weights says better). `--tiny` runs offline on random components.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for `common`

from common.dit_video_cli import dit_video_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(dit_video_main(["ltx"], fps=24))
