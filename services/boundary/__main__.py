"""python -m services.boundary: runs the boundary server."""

from services.common import runtime

from .server import BoundaryService, Settings

if __name__ == "__main__":
    runtime.run(BoundaryService, Settings)
