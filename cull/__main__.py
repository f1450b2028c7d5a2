"""`python -m cull ARGS` runs the command line (and `accelerate launch -m cull finetune ...`)."""
import sys

from cull.cli.main import main

sys.exit(main())
