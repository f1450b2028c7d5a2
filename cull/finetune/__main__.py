"""`python -m cull.finetune ARGS` (and `accelerate launch -m cull.finetune ARGS`): run `cull finetune`."""
import sys

from .commands import main

sys.exit(main())
