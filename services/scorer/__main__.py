"""python -m services.scorer: runs the scorer server."""

from services.common import runtime

from .server import ScorerService, Settings

if __name__ == "__main__":
    runtime.run(ScorerService, Settings)
