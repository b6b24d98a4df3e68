"""``python -m salad_lite``: the ``salad-lite`` command line (:mod:`salad_lite.cli`)."""

from salad_lite.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
