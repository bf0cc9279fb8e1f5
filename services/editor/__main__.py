"""python -m services.editor: runs the editor server."""

from services.common import runtime

from .server import EditorService, Settings

if __name__ == "__main__":
    runtime.run(EditorService, Settings)
