"""D-RISE (Petsiuk et al., CVPR 2021): saliency of one detection = E[s(x ⊙ M) · M] / E[M] over
RISE's random masks M, with s the D-RISE similarity of the masked run's candidates to the
detection (``onnx_xai.detection.DetectionTarget``: max over candidates of IoU · cosine of class
vectors · objectness). Any other target weighs the masks by its score (RISE with that target)."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from tqdm.auto import tqdm

from .. import targets
from ..detection import DetectionTarget
from ..engines.surrogate import item_extra
from ..errors import NonFiniteError
from ..finite import check_finite_output, check_number, finite_rows, warn_nonfinite
from ..kernels import rise as kern
from ..registry import method
from ..runtime import ModelSource


@method("drise", kind="perturbation", summary="D-RISE (random masks weighted by a detection's similarity)",
        flags={"n_masks": "n_masks", "seed": "seed", "batch": "n_batch"}, defaults={"n_masks": 1000, "seed": 0})
class DRISE:
    """D-RISE for 2D inputs ``(B, C, H, W)`` (3D volumes work the same way).

    Args:
        model: a ``Model`` or anything ``Model`` accepts.
        n_masks: number of random masks (the paper uses 5000; 1000 is often enough).
        cell_size: cells per spatial dimension of the mask grid (the paper: 16).
        p1: probability that a grid cell is kept.
        n_batch: masked inputs per forward pass.
        seed: seed of the masks (None: fresh randomness); every item sees the same masks.
        verbose: tqdm bar (None: the model's default).
    """

    def __init__(self, model: ModelSource, n_masks: int = 1000, cell_size: int | tuple[int, ...] = 16,
                 p1: float = 0.5, n_batch: int = 32, *, seed: int | None = None,
                 verbose: bool | None = None) -> None:
        self.model = targets.as_model(model)
        self.n_masks = targets.positive_int("n_masks", n_masks)
        self.n_batch = targets.positive_int("n_batch", n_batch)
        cells = cell_size if isinstance(cell_size, (tuple, list)) else (cell_size,)
        self.cell_size = tuple(targets.positive_int("cell_size", c) for c in cells)
        self.p1 = check_number("p1", p1, 0.0, 1.0, open_min=True, open_max=True)
        self.seed, self.verbose = seed, verbose

    def __call__(self, x: Any, target: Any, *, extra_inputs: dict | None = None) -> np.ndarray:
        """D-RISE maps of ``x`` ``(B, C, *spatial)`` for ``target`` (one ``DetectionTarget`` for
        every item, or one per item) → ``(B, 1, *spatial)`` float32."""
        x = self.model.check_input(x)
        if x.dtype.kind != "f" or x.ndim not in (4, 5):
            raise ValueError(f"D-RISE masks floating-point (B, C, H, W[, D]) inputs, got {x.dtype.name} {x.shape}")
        items = self._items(x, target, extra_inputs)
        if len(items) != len(x) or not all(isinstance(t, targets.Target) for t in items):
            raise ValueError("D-RISE explains a detection: give an onnx_xai.detection.DetectionTarget (a box "
                             "and its class), one per item, or any other onnx_xai.targets target (CLI: --box "
                             "x0,y0,x1,y1 or --detection INDEX)")
        spatial = x.shape[2:]
        if len(self.cell_size) not in (1, len(spatial)):
            raise ValueError(f"cell_size needs 1 or {len(spatial)} values, got {self.cell_size}")
        nb = min(self.n_batch, self.n_masks)
        masks = kern.MaskBatch(spatial, x.shape[1], tuple(np.broadcast_to(self.cell_size, len(spatial))),
                               self.p1, nb)
        show = self.model.verbose if self.verbose is None else self.verbose
        result, dropped = [], 0
        with tqdm(total=self.n_masks * len(x), unit="mask", desc="D-RISE", disable=not show,
                  delay=1.0, leave=False) as bar:
            for item, (xi, tgt) in enumerate(zip(x, items)):
                score = self._scorer(tgt, xi, item_extra(extra_inputs or {}, item, len(x)) or None)
                check_finite_output(score(xi[None]), "the D-RISE similarity", f"item {item}")
                masks.reset(self.seed)
                sal, finite = np.zeros((1, xi[0].size), np.float64), 0
                for start in range(0, self.n_masks, nb):
                    n = min(nb, self.n_masks - start)
                    w = score(masks.fill(xi, n))[:, None]
                    ok = finite_rows(w)
                    finite += int(ok.sum())
                    masks.accumulate(np.where(ok[:, None], w, 0.0), sal)
                    bar.update(n)
                if finite == 0:
                    raise NonFiniteError(f"D-RISE: no masked copy of item {item} has a finite similarity")
                dropped += self.n_masks - finite
                result.append(sal / (finite * self.p1))
        warn_nonfinite("D-RISE", dropped, self.n_masks * len(x), "masked copies", "the map averages the finite ones")
        return np.stack(result).reshape(len(x), 1, *spatial).astype(np.float32)

    def _items(self, x: np.ndarray, target: Any, extra: dict | None) -> list:
        """One target per item: a list as given, a detection repeated, any other target
        resolved on ``x`` (its class per item) and split."""
        if isinstance(target, (list, tuple)):
            return list(target)
        if isinstance(target, DetectionTarget) or not isinstance(target, targets.Target):
            return [target] * len(x)
        out = self.model.check_outputs(target.output)[0]
        fixed = target.resolve(self.model.predict(x, outputs=out, extra_inputs=extra, verbose=False))
        return [fixed.select(np.array([i])) for i in range(len(x))]

    def _scorer(self, tgt: targets.Target, xi: np.ndarray, extra: dict | None) -> Callable:
        """Runs ``(n, C, *spatial)`` → ``(n,)`` weights: a detection's similarity, or any other
        target's score (resolved on the unmasked ``xi``: RISE with that target)."""
        predict = lambda batch, names: self.model.predict(batch, outputs=names, extra_inputs=extra, verbose=False)
        if isinstance(tgt, DetectionTarget):
            names = tgt.spec.outputs(self.model)
            return lambda batch: tgt.score(tgt.spec.read(predict(batch, names)))
        out = self.model.check_outputs(tgt.output)[0]
        fixed = tgt.resolve(predict(xi[None], out))
        return lambda batch: fixed(predict(batch, out))

    def explain(self, x: np.ndarray, target: targets.Target) -> np.ndarray:
        """The registry's protocol: ``(B, 1, *spatial)`` D-RISE map of a ``DetectionTarget``."""
        return self(x, target)

