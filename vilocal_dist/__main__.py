"""`python -m vilocal_dist …` is the same as `vilocal …` (handy under `ray job submit`)."""

import sys

from vilocal_dist.cli.main import main

sys.exit(main())
