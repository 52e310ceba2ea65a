"""Forward or reverse mode: which builds a Jacobian faster, for which shape?

f(x) = tanh(A·x) maps d inputs to m outputs. Reverse mode (``jax``, ``torch``: one VJP per
output, vectorised) costs about m passes; forward mode (``jax-fwd``, ``torch-fwd``: one JVP
per input) about d. So forward mode should win when m ≫ d and reverse mode when d ≫ m.
This measures both on the two shapes, after one untimed call (compilation, tracing),
as the best of interleaved repeats, side by side in one process.

    python benchmarks/forward_reverse.py [--repeats 30] [--wide 2000] [--narrow 10]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import gradlab


def tanh_layer(params: dict, data: dict, xp: object) -> object:
    return xp.tanh(data["A"] @ params["x"])  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--wide", type=int, default=2000)
    parser.add_argument("--narrow", type=int, default=10)
    args = parser.parse_args()
    engines = [
        name
        for name in ("jax", "jax-fwd", "torch", "torch-fwd")
        if name in gradlab.available_engines()
    ]
    rng = np.random.default_rng(0)
    print("| shape (outputs m × inputs d) | " + " | ".join(engines) + " | faster mode |")
    print("|---|" + "---|" * (len(engines) + 1))
    for m, d in ((args.wide, args.narrow), (args.narrow, args.wide)):
        data = {"A": rng.normal(size=(m, d)) / np.sqrt(d)}
        params = {"x": rng.normal(size=d)}
        best = dict.fromkeys(engines, np.inf)
        for name in engines:  # the first call traces and compiles: not timed
            gradlab.jacobian(tanh_layer, data, params, engine=name)
        for _ in range(args.repeats):
            for name in engines:
                start = time.perf_counter()
                gradlab.jacobian(tanh_layer, data, params, engine=name)
                best[name] = min(best[name], time.perf_counter() - start)
        reverse = min(best[name] for name in engines if not name.endswith("-fwd"))
        forward = min(best[name] for name in engines if name.endswith("-fwd"))
        winner = "forward" if forward < reverse else "reverse"
        cells = " | ".join(f"{best[name] * 1e3:.2f} ms" for name in engines)
        ratio = max(forward, reverse) / min(forward, reverse)
        print(f"| {m} × {d} | {cells} | {winner}, {ratio:.1f}× |")


if __name__ == "__main__":
    main()
