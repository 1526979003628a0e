"""RISE (Petsiuk et al., BMVC 2018): saliency = E[score(x ⊙ M) · M] / E[M] over random masks M."""
from __future__ import annotations

from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .. import targets
from ..errors import TOKEN_HINT, NonFiniteError
from ..finite import check_finite_output, check_number, finite_rows, warn_nonfinite
from ..kernels import rise as kern
from ..layout import channel_first, to_channel_first
from ..registry import method
from ..runtime import ModelSource


@method("rise", kind="perturbation", summary="RISE (random masks weighted by the class probability)",
        flags={"n_masks": "n_masks", "seed": "seed", "batch": "n_batch"}, defaults={"n_masks": 1000, "seed": 0},
        score="softmax")
class RISE:
    """Randomized Input Sampling for Explanation, for 2D ``(B, C, H, W)`` and 3D ``(B, C, H, W, D)`` inputs.

    Args:
        model: a ``Model`` or anything ``Model`` accepts.
        n_masks: number of random masks.
        cell_size: cells per spatial dimension of the low-resolution mask grid (the paper's
            ``s``); one int or one per spatial dimension. A cell spans ``size / cell_size`` pixels.
        p1: probability that a grid cell is kept.
        n_batch: masked inputs per forward pass (peak extra memory ≈ ``(C + 1) · n_batch`` inputs).
        seed: seed of the masks (None: fresh randomness each call). Every item of a batch sees
            the same masks.
        activate: True: softmax over classes (sigmoid for one class); False: raw outputs; or a
            callable ``(B, K) → (B, K)``.
        verbose: tqdm bar (None: the model's default).
        layout: the input's layout, ``"nchw"``, ``"nhwc"`` or ``"auto"`` (None: the Model's;
            see ``onnx_xai.layout``); maps are ``(B, n_index, *spatial)`` either way.

    Non-finite numbers (see ``onnx_xai.finite``): NaN / inf in ``x`` is a ``ValueError``
    (count, first index), a non-finite output on ``x`` itself a ``NonFiniteError``. Masked
    copies that score NaN / inf (for a class explained) are left out with a
    ``NonFiniteWarning`` giving their count: the map is E[score · M] / E[M] over the finite
    masks (``NonFiniteError`` when no mask of an item is finite).
    """

    def __init__(self, model: ModelSource, n_masks: int = 4000, cell_size: int | tuple[int, ...] = 7,
                 p1: float = 0.5, n_batch: int = 32, *, seed: int | None = None,
                 activate: Any = True, verbose: bool | None = None, layout: str | None = None) -> None:
        self.model = channel_first(targets.as_model(model), layout)
        self.n_masks = targets.positive_int("n_masks", n_masks)
        self.n_batch = targets.positive_int("n_batch", n_batch)
        cells = cell_size if isinstance(cell_size, (tuple, list)) else (cell_size,)
        self.cell_size = tuple(targets.positive_int("cell_size", c) for c in cells)
        self.p1 = check_number("p1", p1, 0.0, 1.0, open_min=True, open_max=True)
        self.seed = seed
        targets.class_scorer(activate)  # checked here
        self.activate = activate
        self.verbose = verbose

    def __call__(self, x: Any, index: Any = None, *, extra_inputs: dict | None = None) -> np.ndarray:
        """Saliency of ``x`` ``(B, C, *spatial)`` for class ``index`` (None: the top class of each item;
        an int; or a sequence of classes; or an ``onnx_xai.targets`` target, scored with its own
        activation) → ``(B, n_index, *spatial)`` float32. ``x`` is in the input's layout
        (``(B, *spatial, C)`` for a channel-last model, see ``onnx_xai.layout``)."""
        x = self.model.check_input(to_channel_first(self.model, x))
        if x.dtype.kind != "f":
            raise ValueError(f"RISE multiplies the input by soft masks, which needs a floating-point "
                             f"input; the model's input {self.model.input_name!r} is {x.dtype.name} "
                             "(use OcclusionSensitivity, which replaces patches by a value; " + TOKEN_HINT + ")")
        spatial = x.shape[2:]
        if len(spatial) not in (2, 3):
            raise ValueError(f"RISE takes (B, C, H, W) or (B, C, H, W, D) inputs, got shape {x.shape}")
        if len(self.cell_size) not in (1, len(spatial)):
            raise ValueError(f"cell_size needs 1 or {len(spatial)} values, got {self.cell_size}")
        output = index.output if isinstance(index, targets.Target) else None
        output = self.model.check_outputs(output)[0]
        raw = self.model.predict(x, outputs=output, extra_inputs=extra_inputs, verbose=False)
        check_finite_output(raw, f"output {output!r}")
        scorers, _ = targets.item_scorers(index, self.activate, raw, many=True)
        for item, score in enumerate(scorers):
            check_finite_output(score(raw[item:item + 1]), f"the score (of output {output!r})")
        nb = min(self.n_batch, self.n_masks)
        masks = kern.MaskBatch(spatial, x.shape[1], tuple(np.broadcast_to(self.cell_size, len(spatial))),
                                 self.p1, nb)
        result, dropped = [], 0
        show = self.model.verbose if self.verbose is None else self.verbose
        with tqdm(total=self.n_masks * len(x), unit="mask", desc="RISE", disable=not show,
                  delay=1.0, leave=False) as bar:
            for item, xi in enumerate(x):
                score = scorers[item]
                extra = _item(extra_inputs, item, len(x))
                masks.reset(self.seed)  # every item sees the same masks
                sal = None
                finite = 0
                for start in range(0, self.n_masks, nb):
                    n = min(nb, self.n_masks - start)
                    weights = score(self.model.predict(masks.fill(xi, n), outputs=output,
                                                       extra_inputs=extra, verbose=False))
                    if sal is None:
                        sal = np.zeros((weights.shape[1], xi[0].size), np.float64)
                    ok = finite_rows(weights)
                    finite += int(ok.sum())
                    masks.accumulate(np.where(ok[:, None], weights, 0.0), sal)  # 0: left out
                    bar.update(n)
                if finite == 0:
                    raise NonFiniteError(f"RISE: the model's output is not finite (NaN or inf) for "
                                         f"every one of the {self.n_masks} masked copies of item "
                                         f"{item}; no map can be made")
                dropped += self.n_masks - finite
                result.append(sal / (finite * self.p1))  # E[score · M] / E[M] over finite masks
        warn_nonfinite("RISE", dropped, self.n_masks * len(x), "masked copies",
                       "the map averages the finite ones")
        return np.stack(result).reshape(len(x), -1, *spatial).astype(np.float32)


    def explain(self, x: np.ndarray, target: targets.Target, **extra_inputs) -> np.ndarray:
        """The registry's protocol: ``(B, 1, *spatial)`` RISE map of ``target``."""
        return self(x, target, extra_inputs=extra_inputs or None)


def _item(extra: dict | None, item: int, n: int) -> dict | None:
    """The extra inputs for item ``item`` of a batch of ``n`` (arrays split along a batch of n)."""
    if not extra:
        return extra
    return {k: (v[item:item + 1] if n > 1 and np.ndim(v) and np.shape(v)[0] == n else v)
            for k, v in extra.items()}
