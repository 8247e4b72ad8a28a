"""Gradient flow through time per cell and sequence length; same as ``jaxrnn gradient-flow``.

    python benchmarks/gradient_flow.py --help
"""

from jaxrnn.programs.gradient_flow import main

if __name__ == "__main__":
    main()
