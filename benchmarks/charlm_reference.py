"""jaxrnn's char-LM beside a plain PyTorch one of the same architecture and recipe (jaxrnn.programs.charlm_reference).

    python benchmarks/charlm_reference.py --texts tinyshakespeare python-stdlib python-docs \
        --cells lstm gru --layers 1 2 --steps 1000 --lr 3e-3 --clip 1
"""

from jaxrnn.programs.charlm_reference import main

if __name__ == "__main__":
    main()
