"""python -m services.generator: runs the generator server."""

from services.common import runtime

from .server import GeneratorService, Settings

if __name__ == "__main__":
    runtime.run(GeneratorService, Settings)
