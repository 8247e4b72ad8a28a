"""How ``checkpoint_every`` cuts a sequence: one policy for the XLA loop and the native kernels.

A sequence of T steps in chunks of ``chunk`` steps is a short first chunk of
``T mod chunk`` steps (none when ``chunk`` divides T), then whole chunks::

    T = 7, chunk = 3:   [x0] [x1 x2 x3] [x4 x5 x6]      head 1, 2 whole chunks
    T = 7, chunk = 10:  [x0 ... x6]                      one chunk of all 7 steps

The short chunk comes first so that the last chunk is whole: the backward
pass starts with the last chunk, whose activations the forward pass keeps
rather than reruns, and a whole chunk gives that saving its full size.
"""

from __future__ import annotations


def layout(steps: int, chunk: int) -> tuple[int, int, int]:
    """``(head, n, size)``: a first chunk of ``head`` steps (0: none), then ``n`` chunks of ``size``.

    ``size`` is ``chunk``, or ``steps`` when the sequence is shorter than one
    chunk (then ``n`` is 1, and 1 with ``size`` 0 for an empty sequence).

    Example::

      >>> from jaxrnn import chunks
      >>> chunks.layout(7, 3), chunks.layout(6, 3), chunks.layout(7, 10), chunks.layout(0, 4)
      ((1, 2, 3), (0, 2, 3), (0, 1, 7), (0, 1, 0))
    """
    n, head = divmod(steps, chunk)
    return (0, 1, steps) if n == 0 else (head, n, chunk)
