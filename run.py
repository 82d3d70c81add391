"""Train an MLP on MNIST as a config file says: `python run.py configs/default.json`."""
import sys
from pathlib import Path

from nnmnist.run.command import main

if __name__ == "__main__":
    sys.exit(main(log_dir_default=Path(__file__).resolve().parent))
