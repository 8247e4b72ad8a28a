r"""Encoder-decoder models: plain (Sutskever et al. 2014) and with attention (Bahdanau et al. 2015;
Luong et al. 2015), teacher forcing, greedy and beam-search decoding inside ``jit``.

The encoder is a :class:`jaxrnn.RNN` (multi-layer, bidirectional by default)
over embedded source tokens, padding-aware through ``src_lengths``. Its last
layer's final states, through a ``tanh`` bridge, start the decoder. Then, for
target step t with previous token :math:`y_{t-1}` and decoder state :math:`s`:

* ``attention=None`` (the bottleneck): :math:`s_t = \mathrm{cell}(s_{t-1}, e(y_{t-1}))`,
  logits :math:`= W_o s_t`. Everything the decoder knows of the source is the
  fixed-size :math:`s_0`.
* ``"bahdanau"`` (additive, from the previous state):

  .. math::

      a_{tj} = \mathrm{softmax}_j\big(v^\top \tanh(W_q s_{t-1} + W_k h_j)\big), \quad
      c_t = \textstyle\sum_j a_{tj} h_j, \quad
      s_t = \mathrm{cell}(s_{t-1}, [e(y_{t-1}); c_t]), \quad
      \text{logits} = W_o [s_t; c_t]

* ``"luong"`` (multiplicative "general", from the new state):
  :math:`s_t = \mathrm{cell}(s_{t-1}, e(y_{t-1}))`,
  :math:`a_{tj} = \mathrm{softmax}_j(s_t^\top W_a h_j)`,
  logits :math:`= W_o \tanh(W_c [c_t; s_t])`.

Padded source positions get exactly zero attention weight.

Example::

  >>> import jax, jax.numpy as jnp
  >>> from jaxrnn.seq2seq import Seq2Seq
  >>> model = Seq2Seq(src_vocab=12, tgt_vocab=12, hidden_size=16, embed_size=8)
  >>> params = model.init(jax.random.key(0))
  >>> src, src_len = jnp.ones((2, 6), int), jnp.array([6, 3])
  >>> tgt_in = jnp.ones((2, 4), int)
  >>> logits, attn = model.apply(params, src, src_len, tgt_in)       # teacher forcing
  >>> logits.shape, attn.shape, bool(jnp.allclose(attn.sum(-1), 1)), float(attn[1, :, 3:].sum())
  ((2, 4, 12), (2, 4, 6), True, 0.0)
  >>> out = jax.jit(model.greedy, static_argnums=(3, 4, 5))(params, src, src_len, 5, 1, 2)
  >>> out.tokens.shape
  (2, 5)
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn import _checks, heads
from jaxrnn.cells import CELLS, Carry
from jaxrnn.layers import RNN

Array = jax.Array
ATTENTION = (None, "bahdanau", "luong")


class Encoded(NamedTuple):
    """What the decoder reads at every step."""

    memory: Array  # (B, S, D*H) encoder outputs
    keys: Array  # (B, S, A) W_k h_j (Bahdanau) or (B, S, H) W_a h_j (Luong); unused without attention
    mask: Array  # (B, S) valid source positions


class Decoded(NamedTuple):
    """A decoding: tokens (B, L), each row's length up to and including the end token (L if none),
    the attention weights (B, L, S) (zeros without attention) and the log-probability (B,)."""

    tokens: Array
    lengths: Array
    attention: Array
    log_prob: Array


@dataclasses.dataclass(frozen=True)
class Seq2Seq:
    """An encoder-decoder over token ids (see the module docstring for the equations).

    Attributes:
      src_vocab, tgt_vocab: vocabulary sizes.
      hidden_size: H of encoder and decoder cells.
      embed_size: token embedding width.
      encoder_layers: stacked encoder layers.
      bidirectional: bidirectional encoder (outputs 2H wide).
      attention: ``None``, ``"bahdanau"`` or ``"luong"``.
      cell: a name of :data:`jaxrnn.CELLS` (encoder and decoder): ``"lstm"``,
        ``"gru"``, ``"vanilla"``, or a linear cell, ``"mingru"``, ``"minlstm"``
        or ``"lru"`` (an even ``hidden_size``).
    """

    src_vocab: int
    tgt_vocab: int
    hidden_size: int = 128
    embed_size: int = 64
    encoder_layers: int = 1
    bidirectional: bool = True
    attention: str | None = "bahdanau"
    cell: str = "gru"

    def __post_init__(self):
        for name in ("src_vocab", "tgt_vocab", "hidden_size", "embed_size", "encoder_layers"):
            _checks.check_positive_int(name, getattr(self, name))
        if self.attention not in ATTENTION:
            raise ValueError(f"attention: expected one of {ATTENTION}, got {self.attention!r}")
        _checks.check_choice("cell", self.cell, tuple(CELLS))

    # ------------------------------------------------------------------ structure

    @property
    def encoder(self) -> RNN:
        return RNN(CELLS[self.cell](self.hidden_size), self.encoder_layers, self.bidirectional)

    @property
    def decoder_cell(self):
        return CELLS[self.cell](self.hidden_size)

    @property
    def memory_size(self) -> int:
        return self.encoder.output_size

    def init(self, key: Array) -> dict[str, Any]:
        """All parameters, as one dict."""
        H, E, M = self.hidden_size, self.embed_size, self.memory_size
        ks = iter(jax.random.split(key, 12))
        dense = lambda k, n_in, n_out: jax.nn.initializers.glorot_uniform()(k, (n_in, n_out))
        decoder_in = E + (M if self.attention == "bahdanau" else 0)
        params = {
            "src_embed": jax.random.normal(next(ks), (self.src_vocab, E)) * 0.1,
            "tgt_embed": jax.random.normal(next(ks), (self.tgt_vocab, E)) * 0.1,
            "encoder": self.encoder.init(next(ks), E),
            "decoder": self.decoder_cell.init(next(ks), decoder_in),
            # one bridge per carry leaf (h; and c for LSTM): last layer's directions -> decoder
            "bridge": [{"w": dense(next(ks), M, H), "b": jnp.zeros(H)}
                       for _ in jax.tree_util.tree_leaves(self.decoder_cell.initial_carry(1))],
        }
        out_in = {None: H, "bahdanau": H + M, "luong": H}[self.attention]
        params["out"] = {"w": dense(next(ks), out_in, self.tgt_vocab), "b": jnp.zeros(self.tgt_vocab)}
        if self.attention == "bahdanau":
            params["attn"] = {"w_q": dense(next(ks), H, H), "w_k": dense(next(ks), M, H),
                              "v": jax.random.normal(next(ks), (H,)) * H**-0.5}
        elif self.attention == "luong":
            params["attn"] = {"w_a": dense(next(ks), M, H), "w_c": dense(next(ks), M + H, H)}
        return params

    # ------------------------------------------------------------------ encoder

    def encode(self, params, src: Array, src_lengths: Array) -> tuple[Encoded, Carry]:
        """Source tokens (B, S) and lengths (B,) -> (Encoded, the decoder's initial carry)."""
        src = jnp.asarray(src)
        if src.ndim != 2:
            raise ValueError(f"src: expected token ids of shape (B, S), got shape {src.shape}")
        memory, final = self.encoder.apply(params["encoder"], params["src_embed"][src], lengths=src_lengths)
        D = len(self.encoder.directions)
        leaves, treedef = jax.tree_util.tree_flatten(final)
        bridged = []
        for leaf, bridge in zip(leaves, params["bridge"]):
            last = jnp.concatenate(list(leaf[-D:]), axis=-1)  # (B, D*H): last layer, every direction
            bridged.append(jnp.tanh(last @ bridge["w"] + bridge["b"]))
        carry = jax.tree_util.tree_unflatten(treedef, bridged)
        mask = heads.sequence_mask(src_lengths, src.shape[1])
        if self.attention == "bahdanau":
            keys = memory @ params["attn"]["w_k"]
        elif self.attention == "luong":
            keys = memory @ params["attn"]["w_a"]
        else:
            keys = jnp.zeros(memory.shape[:2] + (0,), memory.dtype)
        return Encoded(memory, keys, mask), carry

    # ------------------------------------------------------------------ one decoder step

    def _attend(self, scores: Array, enc: Encoded) -> tuple[Array, Array]:
        scores = jnp.where(enc.mask, scores, -1e30)
        weights = jax.nn.softmax(scores, axis=-1) * enc.mask  # exactly 0 on padding
        return weights, jnp.einsum("bs,bsm->bm", weights, enc.memory)

    def step(self, params, enc: Encoded, carry: Carry, prev_token: Array) -> tuple[Carry, Array, Array]:
        """(carry, previous token (B,)) -> (carry, logits (B, V), attention weights (B, S))."""
        cell, emb = self.decoder_cell, params["tgt_embed"][prev_token]
        decode = lambda c, x: cell.step(params["decoder"], c, x)
        if self.attention == "bahdanau":
            a = params["attn"]
            query = cell.hidden(carry) @ a["w_q"]
            weights, context = self._attend(jnp.tanh(query[:, None] + enc.keys) @ a["v"], enc)
            carry, s = decode(carry, jnp.concatenate([emb, context], -1))
            features = jnp.concatenate([s, context], -1)
        elif self.attention == "luong":
            carry, s = decode(carry, emb)
            weights, context = self._attend(jnp.einsum("bh,bsh->bs", s, enc.keys), enc)
            features = jnp.tanh(jnp.concatenate([context, s], -1) @ params["attn"]["w_c"])
        else:
            carry, features = decode(carry, emb)
            weights = jnp.zeros(enc.mask.shape, features.dtype)
        return carry, features @ params["out"]["w"] + params["out"]["b"], weights

    # ------------------------------------------------------------------ training

    def apply(self, params, src: Array, src_lengths: Array, tgt_in: Array) -> tuple[Array, Array]:
        """Teacher forcing: decoder inputs (B, T) (start token then the target shifted right) ->
        (logits (B, T, V), attention (B, T, S))."""
        enc, carry = self.encode(params, src, src_lengths)

        def body(carry, token):
            carry, logits, weights = self.step(params, enc, carry, token)
            return carry, (logits, weights)

        _, (logits, weights) = jax.lax.scan(body, carry, jnp.swapaxes(jnp.asarray(tgt_in), 0, 1))
        return jnp.swapaxes(logits, 0, 1), jnp.swapaxes(weights, 0, 1)

    def loss(self, params, src, src_lengths, tgt_in, tgt_out, tgt_lengths) -> Array:
        """Cross-entropy per target token, padding excluded (:func:`jaxrnn.heads.masked_cross_entropy`)."""
        logits, _ = self.apply(params, src, src_lengths, tgt_in)
        return heads.masked_cross_entropy(logits, tgt_out, tgt_lengths)

    # ------------------------------------------------------------------ decoding

    def greedy(self, params, src: Array, src_lengths: Array, max_len: int, start: int, end: int) -> Decoded:
        """Argmax decoding for ``max_len`` steps; after a row emits ``end`` it keeps emitting ``end``.

        Jit-able with ``max_len``, ``start`` and ``end`` static.
        """
        enc, carry = self.encode(params, src, src_lengths)
        B = enc.memory.shape[0]

        def body(state, _):
            carry, token, done, logp = state
            carry, logits, weights = self.step(params, enc, carry, token)
            log_probs = jax.nn.log_softmax(logits)
            chosen = jnp.where(done, end, jnp.argmax(log_probs, -1))
            logp = logp + jnp.where(done, 0.0, jnp.take_along_axis(log_probs, chosen[:, None], 1)[:, 0])
            return (carry, chosen, done | (chosen == end), logp), (chosen, weights, done)

        init = (carry, jnp.full((B,), start), jnp.zeros((B,), bool), jnp.zeros((B,)))
        (_, _, _, logp), (tokens, weights, was_done) = jax.lax.scan(body, init, None, length=max_len)
        lengths = jnp.sum(~was_done, axis=0)
        return Decoded(tokens.T, lengths, jnp.swapaxes(weights, 0, 1), logp)

    def beam_search(self, params, src: Array, src_lengths: Array, max_len: int, start: int, end: int,
                    beam_size: int = 4, length_penalty: float = 0.6) -> Decoded:
        r"""Beam search inside ``jit`` (``max_len``, ``start``, ``end``, ``beam_size`` static).

        Keeps the ``beam_size`` best prefixes by total log-probability; a
        finished beam (one that emitted ``end``) only extends with ``end`` at no
        cost. The answer is the beam with the best length-normalised score
        :math:`\log p / ((5 + n) / 6)^{\alpha}` (Wu et al. 2016), n its length
        including ``end``. With ``beam_size=1`` it is greedy decoding.
        """
        enc, carry = self.encode(params, src, src_lengths)
        B, K, V = enc.memory.shape[0], beam_size, self.tgt_vocab
        tile = lambda a: jnp.repeat(a, K, axis=0)  # (B, ...) -> (B*K, ...), beams of a row together
        enc_k = jax.tree_util.tree_map(tile, enc)
        carry = jax.tree_util.tree_map(tile, carry)
        S = enc.memory.shape[1]

        def body(state, t):
            carry, prev, tokens, attn, logp, done, lengths = state
            carry, logits, weights = self.step(params, enc_k, carry, prev.reshape(B * K))
            log_probs = jax.nn.log_softmax(logits).reshape(B, K, V)
            only_end = jnp.full((V,), -jnp.inf).at[end].set(0.0)
            log_probs = jnp.where(done[..., None], only_end, log_probs)
            total = (logp[..., None] + log_probs).reshape(B, K * V)
            logp, flat = jax.lax.top_k(total, K)
            beam, token = flat // V, flat % V
            pick = lambda a: jnp.take_along_axis(a, beam.reshape((B, K) + (1,) * (a.ndim - 2)), axis=1)
            tokens, attn = pick(tokens).at[:, :, t].set(token), pick(attn).at[:, :, t].set(
                pick(weights.reshape(B, K, S)))
            was_done = pick(done)
            lengths = pick(lengths) + (~was_done).astype(jnp.int32)
            carry = jax.tree_util.tree_map(
                lambda c: pick(c.reshape((B, K) + c.shape[1:])).reshape(c.shape), carry)
            return (carry, token, tokens, attn, logp, was_done | (token == end), lengths), None

        init = (
            carry, jnp.full((B, K), start), jnp.full((B, K, max_len), end), jnp.zeros((B, K, max_len, S)),
            jnp.tile(jnp.array([0.0] + [-jnp.inf] * (K - 1)), (B, 1)),  # one live beam to start
            jnp.zeros((B, K), bool), jnp.zeros((B, K), jnp.int32),
        )
        (_, _, tokens, attn, logp, _, lengths), _ = jax.lax.scan(body, init, jnp.arange(max_len))
        score = logp / ((5.0 + lengths) / 6.0) ** length_penalty
        best = jnp.argmax(score, axis=1)
        take = lambda a: jnp.take_along_axis(a, best.reshape((B, 1) + (1,) * (a.ndim - 2)), axis=1)[:, 0]
        return Decoded(take(tokens), take(lengths), take(attn), take(logp))
