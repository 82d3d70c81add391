"""Train an MLP on MNIST as a config file says: `python run.py configs/default.json`.

The log and model files go beside this file (or LogDir), and so does MNIST (data/, unless
DataDir or $NNMNIST_DATA says otherwise). The installed `nnmnist train` does the same in the
current folder.
"""
import sys
from pathlib import Path

from nnmnist.data.mnist import use_data_beside
from nnmnist.run.command import main

if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    use_data_beside(here)
    sys.exit(main(log_dir_default=here))
