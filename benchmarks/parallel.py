"""Every step at once against the loop: the linear cells' prefix scan, DEER and quasi-DEER for the nonlinear
cells (jaxrnn.programs.parallel).

    python benchmarks/parallel.py --cells mingru minlstm --lengths 100 1000 10000 100000 --batch 8 --hidden 64
    python benchmarks/parallel.py --cells gru --hidden 8 16 --lengths 100 1000 10000 --batch 8
"""

from jaxrnn.programs.parallel import main

if __name__ == "__main__":
    main()
