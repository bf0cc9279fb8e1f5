"""python -m services.scorer.check DIR: checks a plug-in folder as the scorer would, models loaded and run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .engine import Engine
from .manifest import ManifestError, load_folder


def main(argv: list[str] | None = None) -> int:
    """Loads every manifest and model of the folder (trial run included); prints the attributes or the error."""
    p = argparse.ArgumentParser(prog="python -m services.scorer.check", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("folder", type=Path, help="plug-in folder (as --plugins-dir / IFGAN_PLUGINS_DIR)")
    p.add_argument("--models-dir", default=None, help="model cache folder (default: $IFGAN_MODELS_DIR or ~/.cache)")
    args = p.parse_args(argv)
    try:
        engine = Engine(args.models_dir, load_folder(args.folder))
        engine.load()
    except ManifestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    plugins = {name: a for name, a in engine.attributes.items() if a.plugin}
    for name, a in plugins.items():
        print(f"{name:24s} {a.spec.kind:12s} {a.spec.unit:12s} [{a.spec.min_value:g}, {a.spec.max_value:g}]  "
              f"{a.group} ({a.source}, {engine.models[a.group].provider})")
    print(f"ok: {len(plugins)} plug-in attribute(s) in {args.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
