"""`python -m trissh` runs the same CLI as the `trissh` console script."""

from trissh.cli import main

raise SystemExit(main())
