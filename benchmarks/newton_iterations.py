"""Newton's iterations (DEER, quasi-DEER, ELK) against T, the spectral radius of W_h and the input scale
(jaxrnn.programs.newton_iterations).

    python benchmarks/newton_iterations.py
"""

from jaxrnn.programs.newton_iterations import main

if __name__ == "__main__":
    main()
