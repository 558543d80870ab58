"""`python -m t2t_vit COMMAND ...`, the same as the `t2t-vit` command (what torchrun runs: `torchrun -m t2t_vit`)."""

import sys

from .cli import main

sys.exit(main())
