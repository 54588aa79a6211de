"""The centralized baseline: train on DS1 only, choosing the epoch count by patient-wise
cross-validation inside DS1, so that DS2 is never looked at before the final evaluation.

Inter-patient results vary by several macro-F1 points between seeds (see the project brief),
so a baseline is a set of seeds, each with its own initialisation, folds and shuffling.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedbeat.device.beats import Beats
from fedbeat.device.ecg.mitdb import patient_of
from fedbeat.device.ecg.records import RecordBeats
from fedbeat.device.trainer import TrainConfig, Trainer, balanced_class_weight
from fedbeat.models.manifest import ModelDir
from fedbeat.models.metrics import AamiMetrics
from fedbeat.models.params import Params
from fedbeat.models.zoo import create_architecture

EpochDone = Callable[[], None]


@dataclass(frozen=True)
class BaselineConfig:
    """Hyperparameters of one baseline run (one seed)."""

    folds: int = 3
    max_epochs: int = 15
    batch_size: int = 32
    learning_rates: tuple[float, ...] = (0.01,)
    momentum: float = 0.9
    weight_decay: float = 0.0
    class_weight_cap: float = 10.0
    average_epochs: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise ValueError("cross-validation needs at least 2 folds")
        if self.max_epochs < 1:
            raise ValueError("max_epochs must be at least 1")
        if not self.learning_rates or min(self.learning_rates) <= 0:
            raise ValueError("learning_rates needs at least one positive value")
        if not self.weight_decay >= 0:
            raise ValueError("weight_decay must be non-negative")
        if not self.class_weight_cap >= 1:
            raise ValueError("class_weight_cap must be at least 1")
        if self.average_epochs < 1:
            raise ValueError("average_epochs must be at least 1")


@dataclass
class BaselineResult:
    """Parameters trained on all training records, and how their epoch count was chosen."""

    params: Params
    epochs: int
    lr: float
    folds: list[tuple[str, ...]]
    fold_curves: dict[float, list[list[float]]] = field(default_factory=dict)  # lr -> folds

    def mean_curve(self, lr: float) -> list[float]:
        """Validation macro-F1 (N, S, V, F) per epoch at ``lr``, averaged over the folds."""
        return [float(v) for v in np.mean(self.fold_curves[lr], axis=0)]

    def to_json(self) -> dict[str, object]:
        return {"epochs": self.epochs, "lr": self.lr, "folds": [list(f) for f in self.folds],
                "fold_val_macro_f1_nsvf": self.fold_curves[self.lr],
                "mean_val_macro_f1_nsvf": self.mean_curve(self.lr),
                "mean_val_macro_f1_nsvf_by_lr": {str(lr): self.mean_curve(lr)
                                                 for lr in self.fold_curves}}


def patient_folds(records: Sequence[str], folds: int, *, seed: int) -> list[tuple[str, ...]]:
    """Split records into ``folds`` groups by patient (201 and 202 stay together), shuffled.

    Raises
    ------
    ValueError
        If there are fewer patients than folds.
    """
    patients = sorted({patient_of(r) for r in records})
    if len(patients) < folds:
        raise ValueError(f"{len(patients)} patients cannot make {folds} folds")
    order = np.random.default_rng([seed, 0xF01D]).permutation(len(patients))
    groups: list[list[str]] = [[] for _ in range(folds)]
    for position, index in enumerate(order):
        groups[position % folds].extend(r for r in records if patient_of(r) == patients[index])
    return [tuple(sorted(g)) for g in groups]


def _stack(records: Sequence[RecordBeats], trainer: Trainer) -> tuple[Beats, np.ndarray]:
    labels = np.concatenate([r.labels for r in records])
    beats = trainer.beats(np.concatenate([r.windows for r in records]),
                          np.concatenate([r.rr for r in records]), labels)
    return beats, labels


def _train_epochs(model_dir: ModelDir, train: Sequence[RecordBeats],
                  validation: Sequence[RecordBeats] | None, config: BaselineConfig, lr: float,
                  epochs: int, stream: int,
                  on_epoch: EpochDone | None) -> tuple[Params, list[float]]:
    """Train ``epochs`` epochs from this seed's initialisation; score validation after each.

    The model after epoch ``e`` is the average of the parameters at the ends of epochs
    ``e - average_epochs + 1 .. e`` (tail weight averaging, in the spirit of Izmailov et al.
    2018; GroupNorm keeps no running statistics, so averaged weights need no recalibration).
    Training itself continues from the last epoch's own parameters.
    """
    start = Params.initial(create_architecture(model_dir.manifest.model), seed=config.seed)
    trainer = Trainer(model_dir, params=start)
    beats, labels = _stack(train, trainer)
    weights = balanced_class_weight(labels, len(model_dir.manifest.inputs.classes),
                                    cap=config.class_weight_cap)
    val = _stack(validation, trainer) if validation else None
    recent: list[np.ndarray] = []
    curve = []
    for epoch in range(epochs):
        trainer.fit(beats, TrainConfig(epochs=1, batch_size=config.batch_size, lr=lr,
                                       momentum=config.momentum,
                                       weight_decay=config.weight_decay, class_weight=weights,
                                       seed=config.seed * 100_003 + stream * 1_009 + epoch))
        recent = [*recent, trainer.params.to_flat()][-config.average_epochs:]
        if val is not None:
            own = trainer.params
            trainer.params = Params.from_flat(start.layout, np.mean(recent, axis=0))
            predicted = trainer.predict(val[0]).argmax(axis=1)
            trainer.params = own
            score = AamiMetrics.from_labels(val[1], predicted).macro_f1_nsvf
            curve.append(0.0 if score is None else score)
        if on_epoch:
            on_epoch()
    return Params.from_flat(start.layout, np.mean(recent, axis=0)), curve


def run_baseline(model_dir: ModelDir, records: Sequence[RecordBeats], config: BaselineConfig,
                 on_epoch: EpochDone | None = None) -> BaselineResult:
    """Cross-validate learning rate and epoch count inside ``records``, then train on all.

    The selected (learning rate, epoch count) maximises the validation macro-F1 (N, S, V, F)
    averaged over the folds; each fold validates on patients its training never saw. Training
    restarts the optimizer state every epoch (one ``Trainer.fit`` per epoch), in the folds and
    the final run alike.
    """
    by_name = {r.record: r for r in records}
    folds = patient_folds(list(by_name), config.folds, seed=config.seed)
    curves: dict[float, list[list[float]]] = {}
    for lr in config.learning_rates:
        curves[lr] = []
        for index, held_out in enumerate(folds):
            train = [by_name[r] for r in by_name if r not in held_out]
            _, curve = _train_epochs(model_dir, train, [by_name[r] for r in held_out], config,
                                     lr, config.max_epochs, index, on_epoch)
            curves[lr].append(curve)
    means = {lr: np.mean(c, axis=0) for lr, c in curves.items()}
    lr = max(means, key=lambda rate: float(means[rate].max()))
    epochs = int(np.argmax(means[lr])) + 1
    params, _ = _train_epochs(model_dir, list(records), None, config, lr, epochs,
                              config.folds, on_epoch)
    return BaselineResult(params, epochs, lr, folds, curves)
