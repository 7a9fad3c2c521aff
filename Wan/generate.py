"""Generate a video with TGATE on Wan: `cd Wan && python generate.py --help`.

`--model wan` (default: Wan2.1-T2V-1.3B, 832x480, 81 frames, 50 steps, guidance 5.0, UniPC flow_shift 3.0),
`--model wan21-14b` (720p), `--model wan22` (Wan2.2-T2V-A14B, two experts); `--image PICTURE` runs Wan2.1-I2V-14B-480P.
Gate: 40% of the steps, until eval/observation.py on real weights says better. `--tiny` runs offline on random
components.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for `common`

from common.dit_video_cli import dit_video_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(dit_video_main(["wan", "wan21-14b", "wan22"], fps=16, image_key="wan-i2v"))
