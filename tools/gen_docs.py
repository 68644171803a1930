"""Regenerate the generated documentation: JSON Schemas and the configuration reference.

    python tools/gen_docs.py            write docs/syncd.schema.json, docs/syncd-dataset.schema.json
                                        and docs/configuration.md
    python tools/gen_docs.py --check    exit 1 when a committed file differs from the model
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from syncd.ops.configdoc import configuration_reference
from syncd.ops.schema import schema_text

DOCS = Path(__file__).resolve().parent.parent / "docs"


def generated() -> dict[Path, str]:
    """Every generated file and its expected content."""
    return {
        DOCS / "syncd.schema.json": schema_text(),
        DOCS / "syncd-dataset.schema.json": schema_text(dataset=True),
        DOCS / "configuration.md": configuration_reference(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when stale")
    args = parser.parse_args(argv)
    stale = []
    for path, text in generated().items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(path.name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(DOCS.parent)}")
    if stale:
        print(f"stale: {', '.join(stale)} — run `make docs`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
