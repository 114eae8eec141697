"""`python -m sessa ...` (also what `torchrun -m sessa train ...` runs)."""

from sessa.cli import main

raise SystemExit(main())
