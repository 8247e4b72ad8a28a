"""The linear cells' parallel prefix scan against their loop and the sequential GRU and LSTM (jaxrnn.programs.parallel).

    python benchmarks/parallel.py --cells mingru minlstm --lengths 100 1000 10000 100000 --batch 8 --hidden 64
"""

from jaxrnn.programs.parallel import main

if __name__ == "__main__":
    main()
