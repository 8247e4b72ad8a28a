"""A GRU's trajectory at T = 100,000, H = 64 by chunked DEER and quasi-DEER: values, gradients and peak
memory (jaxrnn.programs.newton_memory).

    python benchmarks/newton_memory.py
"""

from jaxrnn.programs.newton_memory import main

if __name__ == "__main__":
    main()
