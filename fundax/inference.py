"""Inference outside training: an exported model folder, or a run's workdir, scoring photographs.

:func:`export_model` writes an inference-only model folder (``python -m fundax.export``):

* ``forward.jax_exported`` — the jitted forward pass serialised with ``jax.export``
  (StableHLO; no TensorFlow), for a symbolic batch size, lowered for ``--platforms``;
  inputs ``(variables, images)`` with images float32 ``(B, S, S, 3)`` in [0, 1];
  outputs ``probability`` and ``logit`` ``(B,)``, ``activation_map`` and ``logit_map``
  ``(B, m, m)``;
* ``variables.msgpack`` — the parameters and BatchNorm statistics (flax serialisation);
* ``model.json`` — the finding, the preprocessing (crop to the fundus, pad to square,
  resize to S, scale to [0, 1]), the stored operating point, the checkpoint, the run's
  config and provenance, and the export's own provenance (fundax, jax and flax versions).

:class:`ExportedModel` loads one on any machine with fundax installed, no workdir needed;
:class:`WorkdirModel` scores with a run's checkpoint directly. Both take photographs through
:func:`prepare_photograph`, the preprocessing ``prepare`` applies to the training set
(``python -m fundax.predict`` uses them).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fundax import models, parallel, provenance
from fundax import workdir as workdirs

FORMAT = "fundax-model"
FORMAT_VERSION = 1
FORWARD_FILE = "forward.jax_exported"
VARIABLES_FILE = "variables.msgpack"
MANIFEST_FILE = "model.json"
OUTPUTS = ("probability", "logit", "activation_map", "logit_map")
DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")


class ExportError(ValueError):
    """A model folder that cannot be written or read."""


def forward_fn(config: ml_collections.ConfigDict):
    """``forward(variables, images) -> outputs``: the inference pass, BatchNorm on running statistics."""
    model = models.create_model(config).clone(axis_name=None)

    def forward(variables: dict[str, Any], images: jax.Array) -> dict[str, jax.Array]:
        out = model.apply(variables, images, train=False)
        return {"probability": jax.nn.sigmoid(out["logit"]), "logit": out["logit"],
                "activation_map": out["activation_map"], "logit_map": out["logit_map"]}

    return forward


def _plain(tree: Any) -> Any:
    """Nested plain dicts of numpy arrays: the structure msgpack restores, so the exported call accepts it."""
    if isinstance(tree, dict) or hasattr(tree, "items"):
        return {str(k): _plain(v) for k, v in tree.items()}
    return np.asarray(tree)


def export_model(workdir: str | pathlib.Path, out_dir: str | pathlib.Path, which: str = "best",
           platforms: tuple[str, ...] = DEFAULT_PLATFORMS) -> dict[str, Any]:
    """Write the model folder of one checkpoint of a run; returns its manifest."""
    from flax import serialization

    wd = workdirs.Workdir(workdir)
    config = workdirs.load_config(wd)
    out_dir = pathlib.Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ExportError(f"--out {out_dir} exists and is not empty: export into a new folder")
    mesh = parallel.make_mesh(jax.devices()[:1])
    state, step = workdirs.restore_state(config, wd, which, mesh)
    variables = _plain({"params": state.params, "batch_stats": state.batch_stats})
    size = int(config.image_size)
    (batch,) = jax.export.symbolic_shape("b")
    specs = (jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), variables),
             jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32))
    try:
        exported = jax.export.export(jax.jit(forward_fn(config)), platforms=tuple(platforms))(*specs)
    except Exception as e:  # noqa: BLE001 — lowering fails in many types; name the platforms
        raise ExportError(f"cannot export for platforms {','.join(platforms)}: {e}") from e
    threshold, origin = workdirs.stored_operating_point(wd)
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "finding": config.finding, "model": config.model, "dtype": config.dtype,
        "checkpoint": {"step": int(step), "which": which, "workdir": str(wd.path.absolute())},
        "preprocessing": {"image_size": size, "crop": "fundus", "pad": "square", "resize": "area",
                          "scale": "uint8 / 255", "channels": "RGB",
                          "function": "fundax.data.images.preprocess"},
        "inputs": {"images": f"float32 (B, {size}, {size}, 3) in [0, 1]", "batch": "any (symbolic)"},
        "outputs": {"probability": "(B,)", "logit": "(B,)", "activation_map": "(B, m, m)",
                    "logit_map": "(B, m, m)", "m": models.activation_map_size(config)},
        "operating_point": {"threshold": threshold, "origin": origin},
        "platforms": list(exported.platforms),
        "config": config.to_dict(),
        "run": workdirs.run_info(wd).get("provenance"),
        "export": provenance.collect(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / FORWARD_FILE).write_bytes(exported.serialize())
    (out_dir / VARIABLES_FILE).write_bytes(serialization.msgpack_serialize(variables))
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, default=_json_default) + "\n")
    return manifest


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON: {type(value).__name__}")


class ExportedModel:
    """A model folder loaded for inference: ``model(images)`` on float32 (B, S, S, 3) in [0, 1]."""

    def __init__(self, model_dir: str | pathlib.Path):
        from flax import serialization

        model_dir = pathlib.Path(model_dir)
        manifest_path = model_dir / MANIFEST_FILE
        if not manifest_path.exists():
            raise ExportError(f"{model_dir} is not a fundax model folder: it has no {MANIFEST_FILE} "
                              "(write one with python -m fundax.export)")
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except ValueError as e:
            raise ExportError(f"{manifest_path} is not JSON: {e}") from None
        if self.manifest.get("format") != FORMAT or self.manifest.get("format_version") != FORMAT_VERSION:
            raise ExportError(f"{manifest_path} is not a {FORMAT} version {FORMAT_VERSION} manifest "
                              f"(format {self.manifest.get('format')!r}, version "
                              f"{self.manifest.get('format_version')!r})")
        for name in (FORWARD_FILE, VARIABLES_FILE):
            if not (model_dir / name).exists():
                raise ExportError(f"{model_dir} lacks {name}: export the model again")
        self.exported = jax.export.deserialize(bytearray((model_dir / FORWARD_FILE).read_bytes()))
        platform = jax.default_backend()
        if platform not in self.exported.platforms:
            raise ExportError(f"{model_dir} was exported for {', '.join(self.exported.platforms)}, not for this "
                              f"machine's {platform}: export it again with --platforms={platform}")
        self.variables = serialization.msgpack_restore((model_dir / VARIABLES_FILE).read_bytes())
        self.model_dir = model_dir

    finding = property(lambda self: self.manifest["finding"])
    image_size = property(lambda self: int(self.manifest["preprocessing"]["image_size"]))
    step = property(lambda self: int(self.manifest["checkpoint"]["step"]))

    def operating_point(self) -> tuple[float | None, str]:
        point = self.manifest.get("operating_point") or {}
        threshold = point.get("threshold")
        return (None if threshold is None else float(threshold)), point.get("origin", "")

    def __call__(self, images: np.ndarray | jax.Array) -> dict[str, np.ndarray]:
        images = jnp.asarray(images, jnp.float32)
        size = self.image_size
        if images.ndim != 4 or images.shape[1:] != (size, size, 3):
            raise ExportError(f"images must be (B, {size}, {size}, 3), got {tuple(images.shape)}")
        return {k: np.asarray(v) for k, v in self.exported.call(self.variables, images).items()}




class WorkdirModel:
    """One checkpoint of a run, restored from its workdir, with the same call as :class:`ExportedModel`."""

    def __init__(self, workdir: str | pathlib.Path, which: str = "best"):
        wd = workdirs.Workdir(workdir)
        self.config = workdirs.load_config(wd)
        mesh = parallel.make_mesh(jax.devices()[:1])
        state, self.step = workdirs.restore_state(self.config, wd, which, mesh)
        self.variables = {"params": state.params, "batch_stats": state.batch_stats}
        self._forward = jax.jit(forward_fn(self.config))
        self._workdir = wd

    finding = property(lambda self: self.config.finding)
    image_size = property(lambda self: int(self.config.image_size))

    def operating_point(self) -> tuple[float | None, str]:
        return workdirs.stored_operating_point(self._workdir)

    def __call__(self, images: np.ndarray | jax.Array) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self._forward(self.variables, jnp.asarray(images, jnp.float32)).items()}


def prepare_photograph(photograph: np.ndarray, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """A decoded photograph as the model sees it: (the prepared uint8 image, float32 in [0, 1])."""
    from fundax.data import images

    # The geometry is not needed to classify: any disc/fovea pair rides along unused.
    prepared, _, _ = images.preprocess(photograph, (0.0, 0.0), (1.0, 0.0), image_size)
    return prepared, prepared.astype(np.float32) / 255.0
