"""`python -m bulk`: the `centermask-bulk` command (`bulk.cli`)."""

from bulk.cli import main

raise SystemExit(main())
