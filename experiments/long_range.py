"""Long-range dependency tasks (adding, copy memory, temporal order, sequential digits) for
vanilla tanh (with and without clipping), IRNN, LSTM (forget bias 1 and chrono init) and GRU
over a ladder of lengths; same as ``jaxrnn long-range``.

    python experiments/long_range.py                  # default ladder, < 30 min on a 2-core CPU
    python experiments/long_range.py --full           # full ladder, 10,000 steps per run

See :mod:`jaxrnn.programs.long_range` for what it trains and writes.
"""

from jaxrnn.programs.long_range import main

if __name__ == "__main__":
    main()
