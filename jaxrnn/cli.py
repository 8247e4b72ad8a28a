"""The ``jaxrnn`` command: ``jaxrnn gradient-flow ...``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> None:
    from jaxrnn.bench import gradient_flow

    parser = argparse.ArgumentParser(prog="jaxrnn", description="jaxrnn benchmarks and experiments")
    commands = parser.add_subparsers(dest="command", required=True)
    flow = commands.add_parser(
        "gradient-flow", help="gradient flow through time per cell and length: plots and tables",
        description=gradient_flow.__doc__.split("\n\n")[0],
    )
    gradient_flow.add_arguments(flow)
    flow.set_defaults(func=gradient_flow.run)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    args.func(args)


if __name__ == "__main__":
    main()
