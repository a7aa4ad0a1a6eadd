"""Fine-tuning: a new run that starts from another run's weights (``config.init_from``).

Clinical teams train one finding after another on small sets: the layers that see the
photograph carry over, the head that answers for one finding does not. From the source
run's checkpoint, the parameters and BatchNorm statistics are loaded wherever the new
model has the same layer with the same shape, except the head, which keeps its fresh
initialisation:

* guided CNN: the depth-1 1×1 conv (``logit_conv``) always, and the atrous pyramid
  (``aspp_rate*``) too when the two findings' lesion-size classes differ (other rates,
  other widths);
* Inception-v3: its classifier (and the auxiliary one).

The optimiser starts fresh (momentum zero, step 0, the learning-rate warm-up again). The
source must be a run of the same model with the same widths; anything else is refused,
naming the layer that does not fit. What was loaded and what was not is printed and
stored in the new run's ``config.json`` (its ``fundax_run.init_from``).
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np

from fundax import findings
from fundax import workdir as workdirs

HEAD_ALWAYS = {"guided_cnn": ("logit_conv",), "inception_v3": ("classifier", "aux_classifier")}


def head_modules(config: ml_collections.ConfigDict, source: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The top-level modules re-initialised when ``config``'s run starts from ``source``'s."""
    head = HEAD_ALWAYS[config.model]
    if config.model == "guided_cnn":
        new, old = findings.get_finding(config.finding), findings.get_finding(source.finding)
        if (new.atrous_rates, new.max_pool_before_gap) != (old.atrous_rates, old.max_pool_before_gap):
            head += ("aspp_rate*",)
    return head


def _in_head(path: tuple[str, ...], head: tuple[str, ...]) -> bool:
    top = path[0]
    return any(top == h or (h.endswith("*") and top.startswith(h[:-1])) for h in head)


def _flat(tree: Any) -> dict[tuple[str, ...], Any]:
    return {tuple(str(getattr(k, "key", k)) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def merge(fresh: Any, source: Any, head: tuple[str, ...], what: str) -> tuple[Any, list[str], list[str]]:
    """``fresh`` with every leaf outside ``head`` replaced by ``source``'s: (tree, loaded, kept fresh).

    A leaf outside the head that ``source`` lacks, or has with another shape, is a ValueError.
    """
    src = _flat(source)
    loaded, kept, problems = [], [], []

    def pick(path, leaf):
        key = tuple(str(getattr(k, "key", k)) for k in path)
        name = "/".join(key)
        if _in_head(key, head):
            kept.append(name)
            return leaf
        if key not in src:
            problems.append(f"{what} {name} is not in the source run")
            return leaf
        if np.shape(src[key]) != np.shape(leaf):
            problems.append(f"{what} {name} has shape {np.shape(src[key])} in the source run, "
                            f"{np.shape(leaf)} here")
            return leaf
        loaded.append(name)
        return jax.device_put(src[key], leaf.sharding).astype(leaf.dtype)

    merged = jax.tree_util.tree_map_with_path(pick, fresh)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ValueError(f"init_from: the source is not a run of the same model ({shown}); "
                         "fine-tuning needs the same model and widths (config.guided_cnn / config.inception_v3)")
    return merged, loaded, kept


def _modules(names: list[str]) -> list[str]:
    return sorted({name.split("/")[0] for name in names})


def init_from(state: Any, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> tuple[Any, dict[str, Any]]:
    """``state`` (a fresh train state of ``config``) with the weights of the run ``config.init_from``
    names, and the record of what was loaded."""
    source_dir, which = workdirs.find_checkpoint(config.init_from)
    source = workdirs.load_config(source_dir)
    if source.model != config.model:
        raise ValueError(f"init_from: {source_dir.path} is a run of model {source.model!r}, this one of "
                         f"{config.model!r}: fine-tuning needs the same model")
    restored, step = workdirs.restore_state(source, source_dir, which, mesh)
    head = head_modules(config, source)
    params, loaded, kept = merge(state.params, restored.params, head, "parameter")
    batch_stats, loaded_bn, kept_bn = merge(state.batch_stats, restored.batch_stats, head, "BatchNorm statistic")
    record = {
        "source": str(source_dir.path.absolute()), "checkpoint": which, "checkpoint_step": int(step),
        "source_finding": source.finding, "source_dataset": source.dataset,
        "loaded_modules": _modules(loaded + loaded_bn), "reinitialised_modules": _modules(kept + kept_bn),
        "loaded_arrays": len(loaded) + len(loaded_bn), "reinitialised_arrays": len(kept) + len(kept_bn),
        "optimizer": "fresh",
    }
    return state.replace(params=params, batch_stats=batch_stats), record


def summary(record: dict[str, Any]) -> str:
    """What :func:`init_from` did, in one paragraph."""
    return (f"init_from {record['source']} (step {record['checkpoint_step']}, {record['source_finding']}): "
            f"loaded {record['loaded_arrays']} arrays ({', '.join(record['loaded_modules'])}); re-initialised "
            f"{record['reinitialised_arrays']} ({', '.join(record['reinitialised_modules']) or 'none'}); "
            "optimiser fresh")
