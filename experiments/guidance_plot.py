"""Draw docs/guidance_pull.png: how hard eq. 2 and its ablation push one outside cell down.

    python experiments/guidance_plot.py [--out=docs/guidance_pull.png]

The curves are gradients of fundax.losses.guidance_loss itself (jax.grad through the
sigmoid), not formulas typed in: in logit space eq. 2 pulls a cell by 1 − a above ε
and not at all below it; the log_complement ablation pulls by a.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from fundax import losses, pictures


def pulls(activation: np.ndarray, epsilon: float = losses.EPSILON) -> dict[str, np.ndarray]:
    """How hard each form pushes one outside cell's logit down: d(guidance)/d(logit), for a map of one cell.

    Gradient descent moves the logit by −learning_rate × this, so a positive value is a pull down.
    """
    logits = jnp.log(activation) - jnp.log1p(-activation)
    outside, one = jnp.zeros((1, 1, 1)), jnp.ones(1)
    out = {}
    for form, label in (("eq2", "eq. 2 (the paper): 1 − a"), ("log_complement", "ablation −log(1 − a): a")):
        def loss(z, form=form):
            return losses.guidance_loss(jax.nn.sigmoid(z).reshape(1, 1, 1), outside, one, epsilon, form)

        out[label] = np.asarray(jax.vmap(jax.grad(loss))(logits))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/guidance_pull.png")
    args = parser.parse_args()
    activation = np.geomspace(1e-4, 0.5, 200)
    activation = np.concatenate([activation, 1 - activation[::-1][1:]])
    print(pictures.draw_guidance_pull(activation, pulls(activation), losses.EPSILON, args.out))


if __name__ == "__main__":
    main()
