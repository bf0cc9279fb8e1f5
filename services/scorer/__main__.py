"""python -m services.scorer: runs the scorer server."""

import sys

from services.common import runtime

from .manifest import ManifestError
from .server import ScorerService, Settings

if __name__ == "__main__":
    try:
        runtime.run(ScorerService, Settings)
    except ManifestError as e:  # a broken plug-in: say which file and field, exit before listening
        print(f"error: plug-in manifest refused: {e}", file=sys.stderr)
        sys.exit(2)
