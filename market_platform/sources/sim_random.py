"""Counter-based random numbers for the simulator: every draw is a pure function of its coordinates.

A draw is `mix(key + counter * GOLDEN)`, splitmix64's construction: `key` is a 64-bit stream
key derived from (seed, symbol, day, purpose) and `counter` encodes where the number is used
(minute, event index). No generator state is carried from one draw to the next, so any subset of
the data (one symbol, one hour) is computed by evaluating the same draws, vectorised, and comes
out identical to the same rows of the whole day.
"""

from __future__ import annotations

import hashlib

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S32 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(32)
_LOW32 = np.uint64(0xFFFFFFFF)
_TWO_PI = 2.0 * np.pi


def mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser applied in place to a uint64 array the caller owns; returns it."""
    x ^= x >> _S30
    x *= _M1
    x ^= x >> _S27
    x *= _M2
    x ^= x >> _S31
    return x


def text_key(*parts: object) -> int:
    """A stable 64-bit key of a tuple of values (never Python's per-process salted `hash`)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def derive(keys: np.ndarray | int, purpose: int) -> np.ndarray:
    """Stream keys for `purpose` from parent keys: independent streams of the same parent."""
    x = np.array(keys, dtype=np.uint64, ndmin=1) ^ np.uint64(purpose * 0x2545F4914F6CDD1D % 2**64)
    return mix(mix(x))


def bits(keys: np.ndarray, counters: np.ndarray) -> np.ndarray:
    """64 random bits per element of `keys` and `counters` (uint64 arrays, broadcast together)."""
    return mix(np.asarray(counters, dtype=np.uint64) * GOLDEN + np.asarray(keys, dtype=np.uint64))


def uniform53(h: np.ndarray) -> np.ndarray:
    """Uniform in [0, 1) from 64 random bits, 53 of them used."""
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def uniform_pair(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two independent uniforms in (0, 1) from the two 32-bit halves of 64 random bits."""
    hi = ((h >> _S32).astype(np.float64) + 0.5) * (1.0 / 2**32)
    lo = ((h & _LOW32).astype(np.float64) + 0.5) * (1.0 / 2**32)
    return hi, lo


def normal_pair(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two independent standard normals from 64 random bits (Box-Muller on the 32-bit halves)."""
    u1, u2 = uniform_pair(h)
    radius = np.sqrt(-2.0 * np.log(u1))
    angle = _TWO_PI * u2
    return radius * np.cos(angle), radius * np.sin(angle)


def normal(h: np.ndarray) -> np.ndarray:
    return normal_pair(h)[0]


def brownian(keys: np.ndarray, t: int, depth: int) -> np.ndarray:
    """Standard Brownian motion W(t) at integer time `t` in [0, 2**depth], one path per key.

    Built top-down as a tree of Brownian bridges (W(0)=0, then each dyadic midpoint given its
    interval's ends), with the bridge at tree node `node` drawn from counter `node`. Evaluating
    one point costs `depth` draws per key and any two evaluations of the same path agree, so a
    price can be read on any day without generating the days before it.
    """
    span = 1 << depth
    if not 0 <= t <= span:
        raise ValueError(f"t={t} outside [0, {span}]")
    keys = np.asarray(keys, dtype=np.uint64)
    lo, hi = 0, span
    w_lo = np.zeros(keys.shape)
    w_hi = np.sqrt(float(span)) * normal(bits(keys, np.zeros(keys.shape, np.uint64)))
    node = 1
    while hi - lo > 1 and t not in (lo, hi):
        mid = (lo + hi) // 2
        z = normal(bits(keys, np.full(keys.shape, node, np.uint64)))
        w_mid = 0.5 * (w_lo + w_hi) + np.sqrt((hi - lo) / 4.0) * z
        if t < mid:
            hi, w_hi, node = mid, w_mid, 2 * node
        else:
            lo, w_lo, node = mid, w_mid, 2 * node + 1
    return w_lo if t == lo else w_hi


def brownian_at(keys: np.ndarray, t: np.ndarray, depth: int) -> np.ndarray:
    """`brownian` with one time per key: W_i(t_i), the same values `brownian(keys[i], t[i], depth)` gives."""
    span = 1 << depth
    keys = np.asarray(keys, dtype=np.uint64)
    t = np.broadcast_to(np.asarray(t, dtype=np.int64), keys.shape)
    if ((t < 0) | (t > span)).any():
        raise ValueError(f"times outside [0, {span}]: {t[(t < 0) | (t > span)][:5].tolist()}")
    lo, hi = np.zeros(keys.shape, np.int64), np.full(keys.shape, span, np.int64)
    w_lo = np.zeros(keys.shape)
    w_hi = np.sqrt(float(span)) * normal(bits(keys, np.zeros(keys.shape, np.uint64)))
    node = np.ones(keys.shape, np.uint64)
    active = (hi - lo > 1) & (t != lo) & (t != hi)
    while active.any():
        mid = (lo + hi) // 2
        z = normal(bits(keys, node))
        w_mid = 0.5 * (w_lo + w_hi) + np.sqrt((hi - lo) / 4.0) * z
        left = active & (t < mid)
        right = active & ~left
        hi, w_hi = np.where(left, mid, hi), np.where(left, w_mid, w_hi)
        lo, w_lo = np.where(right, mid, lo), np.where(right, w_mid, w_lo)
        node = np.where(active, 2 * node + right.astype(np.uint64), node)
        active = (hi - lo > 1) & (t != lo) & (t != hi)
    return np.where(t == lo, w_lo, w_hi)


def fold(x: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Reflect `x` into [low, high] (a triangle wave): keeps a random walk between two walls."""
    width = high - low
    y = np.mod(x - low, 2.0 * width)
    return low + np.where(y > width, 2.0 * width - y, y)
