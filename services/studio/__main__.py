"""python -m services.studio: runs the studio (its page over HTTP, its health and info over gRPC)."""

from services.common import runtime

from .server import Settings, StudioService

if __name__ == "__main__":
    runtime.run(StudioService, Settings)
