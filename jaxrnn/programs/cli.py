"""The ``jaxrnn`` command: ``gradient-flow``, ``speed``, ``long-range``, ``train char-lm``, ``sample``.

Exit status: 0 when the command did its work; 2 for a user error (a bad flag
value, a missing or unusable file or folder, a text too short or not text, the
``programs`` extra not installed), reported as one line on stderr,
``jaxrnn <command>: error: <message>``, without a traceback or usage; 1 when a
run started and failed: a diverged run or a checkpoint that could not be
written (one line on stderr as well, the checkpoints saved before it kept), or
a failed ``--sanity`` check (its verdict on stdout). Anything else is a bug and
shows its traceback.

Notices that are not errors (a damaged checkpoint skipped on ``--resume``, a
``--resume`` with nothing to resume from) are one line on stderr each, and
the command goes on. orbax's own logging (absl) is silenced below CRITICAL:
what it would say at length, the one-line errors and notices say.
"""

from __future__ import annotations

import logging
import os
import sys

from jaxrnn.programs.arguments import ArgumentParser, HelpFormatter, UsageError

#: Exceptions that mean the user must change something: status 2, one line.
USER_ERRORS: tuple[type[BaseException], ...] = (
    UsageError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)

#: What the commands need beyond the library, pyproject's ``programs`` extra: module -> package.
PROGRAM_MODULES = {"matplotlib": "matplotlib", "tqdm": "tqdm", "sklearn": "scikit-learn"}


def missing_programs_extra() -> list[str]:
    """The ``programs`` extra's packages that are not installed (looked up, not imported)."""
    import importlib.util

    return [package for module, package in PROGRAM_MODULES.items() if importlib.util.find_spec(module) is None]


def _run_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean a run started and failed: status 1, one line."""
    from jaxrnn.checkpoints import CheckpointError
    from jaxrnn.programs.char_lm import PeerLost
    from jaxrnn.training import DivergenceError

    return DivergenceError, CheckpointError, PeerLost


def build_parser() -> ArgumentParser:
    from jaxrnn.programs import char_lm, gradient_flow, long_range, speed

    parser = ArgumentParser(prog="jaxrnn", description="jaxrnn benchmarks and experiments",
                            formatter_class=HelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    flow = commands.add_parser(
        "gradient-flow", help="gradient flow through time per cell and length: plots and tables",
        description=gradient_flow.__doc__.split("\n\n")[0], formatter_class=HelpFormatter,
    )
    gradient_flow.add_arguments(flow)
    flow.set_defaults(func=gradient_flow.run)

    bench = commands.add_parser("speed", help="speed and memory against flax, equinox, haiku and torch",
                                description=speed.__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    speed.add_arguments(bench)
    bench.set_defaults(func=speed.run)

    tasks = commands.add_parser("long-range", help="adding, copy, temporal order, digits: every cell, "
                                "a ladder of lengths", description=long_range.__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    long_range.add_arguments(tasks)
    tasks.set_defaults(func=long_range.run)

    train = commands.add_parser("train", help="train a model", formatter_class=HelpFormatter)
    models = train.add_subparsers(dest="model", required=True)
    lm = models.add_parser("char-lm", help="a character-level language model",
                           description=char_lm.__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    char_lm.add_train_arguments(lm)
    lm.set_defaults(func=char_lm.train)
    sample = commands.add_parser("sample", help="sample from a trained char-lm run",
                                 description="Print a sample from a char-lm run's best checkpoint.",
                                 formatter_class=HelpFormatter)
    char_lm.add_sample_arguments(sample)
    sample.set_defaults(func=char_lm.sample)
    parser.commands = {"gradient-flow": flow, "speed": bench, "long-range": tasks, "train char-lm": lm,
                       "sample": sample}
    return parser


def run_command(prog: str, func, args):
    """Run ``func(args)``, answering a user error with one line and status 2, a failed run with one
    line and status 1 (see the module docstring)."""
    # orbax logs each failed checkpoint write or read at length (through absl); the one-line error says it.
    logging.getLogger("absl").setLevel(logging.CRITICAL)
    try:
        return func(args)
    except USER_ERRORS as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except _run_errors() as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        if getattr(e, "leave_at_once", False):
            sys.stderr.flush()
            sys.stdout.flush()
            os._exit(1)  # JAX's distributed shutdown would wait for the lost process, then abort
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    # Checked before the commands' modules are imported (they import tqdm and, later, matplotlib):
    # `pip install jaxrnn` alone gives the library, and this one line says what the commands need.
    missing = missing_programs_extra()
    if missing:
        print(f"jaxrnn: error: the jaxrnn command needs {', '.join(missing)} (not installed): "
              "pip install 'jaxrnn[programs]'", file=sys.stderr)
        sys.exit(2)
    from jaxrnn.programs import speed

    parser = build_parser()
    args, unknown = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    command = " ".join([args.command] + ([args.model] if args.command == "train" else []))
    if unknown:  # said by the command's own parser, as its other errors are
        parser.commands[command].error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "speed" and argv is None:
        speed.restart_with(speed.environment_for(args))  # --malloc-tunables, --isa: read at start-up only
    run_command(f"jaxrnn {command}", args.func, args)


if __name__ == "__main__":
    main()
