"""The ``jaxrnn`` command: ``gradient-flow``, ``speed``, ``long-range``, ``train char-lm``, ``sample``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> None:
    from jaxrnn import charlm, long_range
    from jaxrnn.bench import gradient_flow, speed

    parser = argparse.ArgumentParser(prog="jaxrnn", description="jaxrnn benchmarks and experiments")
    commands = parser.add_subparsers(dest="command", required=True)
    flow = commands.add_parser(
        "gradient-flow", help="gradient flow through time per cell and length: plots and tables",
        description=gradient_flow.__doc__.split("\n\n")[0],
    )
    gradient_flow.add_arguments(flow)
    flow.set_defaults(func=gradient_flow.run)

    bench = commands.add_parser("speed", help="speed and memory against flax, equinox, haiku and torch",
                                description=speed.__doc__.split("\n\n")[0])
    speed.add_arguments(bench)
    bench.set_defaults(func=speed.run)

    tasks = commands.add_parser("long-range", help="adding, copy, temporal order, digits: every cell, "
                                "a ladder of lengths", description=long_range.__doc__.split("\n\n")[0])
    long_range.add_arguments(tasks)
    tasks.set_defaults(func=long_range.run)

    train = commands.add_parser("train", help="train a model").add_subparsers(dest="model", required=True)
    lm = train.add_parser("char-lm", help="a character-level language model",
                          description=charlm.__doc__.split("\n\n")[0])
    charlm.add_train_arguments(lm)
    lm.set_defaults(func=charlm.train)
    sample = commands.add_parser("sample", help="sample from a trained char-lm run")
    charlm.add_sample_arguments(sample)
    sample.set_defaults(func=charlm.sample)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "speed" and argv is None and not args.default_malloc:
        speed.restart_with_malloc_tunables()  # see jaxrnn.bench.speed: no page faults for any peer
    args.func(args)


if __name__ == "__main__":
    main()
