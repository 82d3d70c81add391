"""`python -m nnmnist SUBCOMMAND`: the same as the `nnmnist` command."""
import sys

from .cli import main

sys.exit(main())
