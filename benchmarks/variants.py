"""jaxrnn's unroll / projection / backward / kernel options side by side, with flax and torch as references.

    python benchmarks/variants.py --cells lstm gru --lengths 100 1000 --unroll 1 2 4 8
    python benchmarks/variants.py --cells lstm gru --unroll 2 --projection per_step --kernel xla native
    python benchmarks/variants.py --batch 1 2 4 8 16 --lengths 100 --unroll 2 --projection hoisted \
        --kernel xla native-small native-wide --peers torch
"""

from jaxrnn.programs.variants import main

if __name__ == "__main__":
    main()
