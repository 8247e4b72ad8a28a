"""Where a native kernel's forward+backward time goes, piece by piece (jaxrnn.programs.kernel_parts).

    python benchmarks/kernel_parts.py --cells lstm gru --lengths 100 1000
"""

from jaxrnn.programs.kernel_parts import main

if __name__ == "__main__":
    main()
