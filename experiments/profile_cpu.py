"""Where the CPU train step spends its time: every conv of the demo network, XLA vs PyTorch.

    python experiments/profile_cpu.py [--image_size=128] [--batch=32] [--repeats=5]

For each conv of the guided CNN at the demo widths (``experiments/configs/cpu_demo.py``)
it times, on the same CPU, the forward pass, the gradient with respect to the input
(dgrad) and with respect to the weights (wgrad) under jax.jit and in PyTorch
(channels_last, oneDNN), and prints the totals by pass. The sum of the three passes
over all convs is most of a train step, so the table says which pass XLA:CPU loses.
Needs the bench extra (torch).
"""

from __future__ import annotations

import argparse
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from fundax.bench import timing


def layers(image_size: int, stem: int = 16, units=(1, 1, 1), aspp: int = 32, rates=(1, 2, 4)):
    """(name, side_in, cin, cout, stride, dilation) of every 3x3 conv of the guided CNN."""
    out = [("stem", image_size, 3, stem, 2, 1)]
    side, width = image_size // 2, stem
    for stage, n in enumerate(units, start=1):
        out += [(f"stage{stage}_unit", side, width, width, 1, 1)] * (2 * n)
        out.append((f"reduction{stage + 1}", side, width, 2 * width, 2, 1))
        side, width = side // 2, 2 * width
    concat = stem * (1 + 2 + 4 + 8)
    out += [(f"aspp_rate{r}", side, concat, aspp, 1, r) for r in rates]
    return out


def median_seconds(fn, sync, repeats: int, iterations: int = 3) -> float:
    return statistics.median(timing.timed_repeats(fn, sync, iterations=iterations, repeats=repeats))


def jax_passes(batch, side, cin, cout, stride, dilation, repeats):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, side, side, cin)), jnp.float32)
    w = jnp.asarray(np.random.default_rng(1).normal(size=(3, 3, cin, cout)), jnp.float32)

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME", rhs_dilation=(dilation, dilation),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    y = conv(x, w)
    fwd = jax.jit(conv)
    dgrad = jax.jit(lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0])
    wgrad = jax.jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0])
    sync = jax.block_until_ready
    return (median_seconds(lambda: fwd(x, w), sync, repeats), median_seconds(lambda: dgrad(x, w, y), sync, repeats),
            median_seconds(lambda: wgrad(x, w, y), sync, repeats))


def torch_passes(batch, side, cin, cout, stride, dilation, repeats):
    x = torch.randn(batch, cin, side, side).contiguous(memory_format=torch.channels_last)
    w = torch.randn(cout, cin, 3, 3).contiguous(memory_format=torch.channels_last)
    conv = lambda x, w: F.conv2d(x, w, stride=stride, padding=dilation, dilation=dilation)  # noqa: E731
    y = conv(x, w)
    sync = lambda _: None  # noqa: E731
    with torch.no_grad():
        fwd = median_seconds(lambda: conv(x, w), sync, repeats)
    dgrad = median_seconds(lambda: torch.ops.aten.convolution_backward(
        y, x, w, None, [stride] * 2, [dilation] * 2, [dilation] * 2, False, [0, 0], 1, [True, False, False])[0],
        sync, repeats)
    wgrad = median_seconds(lambda: torch.ops.aten.convolution_backward(
        y, x, w, None, [stride] * 2, [dilation] * 2, [dilation] * 2, False, [0, 0], 1, [False, True, False])[1],
        sync, repeats)
    return fwd, dgrad, wgrad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; batch {args.batch}, {args.image_size} px; ms, median of {args.repeats}")
    print(f"{'conv':<18}{'in':>10}{'cin>cout':>10}{'s/d':>5} | {'XLA fwd':>8}{'dgrad':>8}{'wgrad':>8} | "
          f"{'torch fwd':>9}{'dgrad':>8}{'wgrad':>8}")
    totals = np.zeros(6)
    for name, side, cin, cout, stride, dilation in layers(args.image_size):
        j = jax_passes(args.batch, side, cin, cout, stride, dilation, args.repeats)
        t = torch_passes(args.batch, side, cin, cout, stride, dilation, args.repeats)
        totals += np.array(j + t)
        ms = [1e3 * v for v in j + t]
        print(f"{name:<18}{f'{side}x{side}':>10}{f'{cin}>{cout}':>10}{f'{stride}/{dilation}':>5} | "
              f"{ms[0]:>8.2f}{ms[1]:>8.2f}{ms[2]:>8.2f} | {ms[3]:>9.2f}{ms[4]:>8.2f}{ms[5]:>8.2f}")
    ms = 1e3 * totals
    print(f"{'total':<43} | {ms[0]:>8.2f}{ms[1]:>8.2f}{ms[2]:>8.2f} | {ms[3]:>9.2f}{ms[4]:>8.2f}{ms[5]:>8.2f}")
    print(f"XLA / torch: fwd {totals[0] / totals[3]:.2f}, dgrad {totals[1] / totals[4]:.2f}, "
          f"wgrad {totals[2] / totals[5]:.2f}, all {totals[:3].sum() / totals[3:].sum():.2f}")


if __name__ == "__main__":
    main()
