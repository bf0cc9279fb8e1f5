"""python -m services.inversion: runs the inversion server."""

from services.common import runtime

from .server import InversionService, Settings

if __name__ == "__main__":
    runtime.run(InversionService, Settings)
