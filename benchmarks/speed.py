"""Speed and memory against flax, equinox, haiku and torch; same as ``jaxrnn speed``.

    python benchmarks/speed.py --quick --memory
"""

from jaxrnn.programs.speed import main

if __name__ == "__main__":
    main()
