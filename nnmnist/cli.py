"""The `nnmnist` command: `nnmnist SUBCOMMAND ...`, also run as `python -m nnmnist SUBCOMMAND`.

Each subcommand is the command line of one part of the package, imported only when it is
called, so that `nnmnist --help` and a mistyped name answer at once.
"""
import sys
from pathlib import Path

# name -> (module, one line of help)
COMMANDS = {
    "train": ("nnmnist.run.command", "train a network as a config file says (the shipped default config without one)"),
    "resume": ("nnmnist.run.command", "continue a run from its .ckpt.npz checkpoint"),
    "evaluate": ("nnmnist.inference.evaluate", "score a model file on the dev and test sets"),
    "predict": ("nnmnist.inference.predict", "label an IDX image file, or tag a text or CoNLL-U file, with a model file"),
    "export": ("nnmnist.inference.export", "write a small inference-only model file"),
    "sweep": ("nnmnist.experiments.sweep", "run a grid of configs x seeds, or summarize one"),
    "plot": ("nnmnist.experiments.plot", "draw training curves or the effect-of-k figure"),
    "fetch": ("nnmnist.data.mnist", "download MNIST (or, --treebank, the tagger's treebank; --check it)"),
}


def usage():
    width = max(map(len, COMMANDS))
    lines = ["usage: nnmnist SUBCOMMAND [ARGS...]   (nnmnist SUBCOMMAND --help for its flags)", "",
             "MLPs on MNIST with backprop (mlp), meProp (mlptop, mlprand) and meSimp (mlpvar).", "",
             "subcommands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "Logs and model files go to the current folder (or LogDir / --log-dir); MNIST is "
              "found in DataDir, $NNMNIST_DATA, data/ here, or the per-user cache folder, where a "
              "first run fetches it (docs/DATA.md)."]
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"error: unknown subcommand {name!r}{hint}; known: {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    import importlib
    module = importlib.import_module(COMMANDS[name][0])
    prog = f"nnmnist {name}"
    if name == "train":
        return module.main(rest, log_dir_default=Path.cwd(), prog=prog)
    if name == "resume":
        if rest and rest[0] not in ("-h", "--help"):
            rest = ["--resume", *rest]
        return module.main(rest, log_dir_default=Path.cwd(), prog=prog)
    return module.main(rest, prog=prog)
