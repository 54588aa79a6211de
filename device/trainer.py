"""On-device training and inference with stock onnxruntime.

The graphs come from ``fedbeat model build``: a fused step (forward, weighted cross-entropy,
backward, FedProx, optimizer) for ordinary training, and for DP-SGD a graph that returns the
sum of per-example gradients clipped to ``clip_norm`` plus an ``apply`` graph that runs the
optimizer on the noised average. Parameters and optimizer state are graph inputs and outputs,
so this module only moves arrays around: it imports numpy and onnxruntime, never onnx.

Batches: examples are shuffled each epoch and cut into ``batch_size`` pieces; the last, smaller
batch is trained on too (the graphs take any batch size), as with torch's ``drop_last=False``.
Under DP-SGD each step instead takes a Poisson sample (each example independently with
probability ``sample_rate``), which is the sampling the RDP accountant assumes (Mironov et al.
2019), and the noised sum is divided by the *expected* batch size (Abadi et al. 2016).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedbeat.device.beats import Beats, InvalidBeatsError
from fedbeat.device.privacy.noise import RandomSource, SecureRandom
from fedbeat.device.sessions import GraphRunner, SessionCache
from fedbeat.models.manifest import ModelDir, ModelFileError, load_model_dir
from fedbeat.models.params import Params

Progress = Callable[[int, int], None]
"""Called as ``progress(steps_done, steps_total)`` after every step."""

_STATE_SLOTS = {"sgd": ("momentum_buffer",), "adam": ("exp_avg", "exp_avg_sq"),
                "adamw": ("exp_avg", "exp_avg_sq")}
_PARAMS = "params"
_GLOBAL = "global_params"


class TrainingDivergedError(ArithmeticError):
    """Training produced non-finite parameters (usually a learning rate that is too high)."""


@dataclass(frozen=True)
class TrainConfig:
    """Local training hyperparameters (what a round announcement carries)."""

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    fedprox_mu: float = 0.0
    class_weight: tuple[float, ...] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in _STATE_SLOTS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of "
                             f"{', '.join(_STATE_SLOTS)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")
        for name in ("lr", "momentum", "weight_decay", "beta1", "beta2", "eps", "fedprox_mu"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite non-negative number, got {value}")
        if self.lr == 0:
            raise ValueError("lr must be positive")
        if self.class_weight is not None and (
                not all(math.isfinite(w) and w >= 0 for w in self.class_weight)
                or not any(self.class_weight)):
            raise ValueError("class_weight must be non-negative, finite and not all zero")


@dataclass(frozen=True)
class DpSgdConfig:
    """Sample-level DP-SGD: per-example clipping to ``clip_norm``, noise ``noise_multiplier``·C.

    ``sample_rate`` is the Poisson sampling probability q; by default ``batch_size / n``.
    """

    noise_multiplier: float
    clip_norm: float
    sample_rate: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ValueError("noise_multiplier must be finite and non-negative")
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ValueError("clip_norm must be positive")
        if self.sample_rate is not None and not 0 < self.sample_rate <= 1:
            raise ValueError("sample_rate must be in (0, 1]")


@dataclass(frozen=True)
class DpSgdReport:
    """What the privacy accountant needs to know about a DP-SGD fit."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    clip_norm: float


@dataclass(frozen=True)
class _Run:
    """What a training loop produced, before it is turned into a :class:`FitResult`."""

    params: np.ndarray
    losses: np.ndarray
    examples_seen: int
    dp: DpSgdReport | None = None
    clipped_fraction: float | None = None


@dataclass(frozen=True)
class FitResult:
    """New parameters, the update (new − start) that leaves the device, and step losses.

    ``losses`` has one entry per step (NaN for a DP-SGD step whose Poisson sample was empty).
    ``clipped_fraction`` is, under DP-SGD, the share of sampled examples whose gradient norm
    exceeded the clipping bound: a diagnostic for choosing ``clip_norm``.
    ``trained`` names the tensors the fit changed: every tensor, or for a head-only fit the
    head's (the rest of ``update`` is exactly zero); :meth:`update_tensors` is what to send.
    """

    params: Params
    update: Params
    losses: np.ndarray
    examples_seen: int
    dp: DpSgdReport | None = None
    clipped_fraction: float | None = None
    trained: tuple[str, ...] = ()

    @property
    def steps(self) -> int:
        return int(self.losses.size)

    @property
    def partial(self) -> bool:
        """Whether the update covers only some tensors (a head-only fit)."""
        return set(self.trained) != set(self.update.layout.names)

    def update_tensors(self) -> dict[str, np.ndarray]:
        """The update by tensor name, only the trained tensors (a partial update if head-only)."""
        return {name: self.update[name] for name in self.trained}


def uniform_class_weight(num_classes: int) -> np.ndarray:
    return np.ones(num_classes, dtype=np.float32)


def balanced_class_weight(labels: np.ndarray, num_classes: int, *,
                          cap: float = 10.0) -> tuple[float, ...]:
    """Inverse-frequency weights ``n / (k * n_c)``, capped so a handful of beats cannot dominate.

    Classes absent from ``labels`` get weight 0 (they contribute no examples anyway). The cap
    matters on real data: with 2 Q beats among 9,600, uncapped weights made SGD diverge.
    """
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = labels.size / (present.sum() * counts[present])
    return tuple(float(w) for w in np.minimum(weights, cap))


class Trainer:
    """Train and run one model on the device.

    Parameters
    ----------
    model
        A model directory written by ``fedbeat model build`` (or an already verified one).
    threads
        onnxruntime intra-op threads. One thread leaves the other core to the ECG pipeline.
    params
        Starting parameters; by default the directory's initial parameters.
    """

    def __init__(self, model: Path | ModelDir, *, threads: int = 1,
                 params: Params | None = None) -> None:
        self.model_dir = model if isinstance(model, ModelDir) else load_model_dir(Path(model))
        self.manifest = self.model_dir.manifest
        self.sessions = SessionCache(self.model_dir, threads)
        self.params = params if params is not None else self.model_dir.initial_params()
        if self.params.layout != self.manifest.layout:
            raise ValueError("parameters do not match this model's layout")

    # -- public API ---------------------------------------------------------------------------

    def beats(self, windows: np.ndarray, rr: np.ndarray,
              labels: np.ndarray | None = None) -> Beats:
        """Validate raw arrays against this model's input spec."""
        return Beats.from_arrays(windows, rr, labels, spec=self.manifest.inputs)

    def fit(self, beats: Beats, config: TrainConfig, *, dp: DpSgdConfig | None = None,
            noise: RandomSource | None = None, progress: Progress | None = None,
            head_only: bool = False) -> FitResult:
        """Train from the current parameters; the trainer keeps the result.

        Parameters
        ----------
        beats
            Labelled beats (see :meth:`beats`).
        config
            Hyperparameters; ``config.seed`` fixes shuffling and dropout masks.
        dp
            Enable DP-SGD. Noise then comes from ``noise`` (default: the OS CSPRNG).
        head_only
            Train only the classifier head (the tensors in :attr:`head_tensors`) on frozen
            features, with the ``train_head_<optimizer>`` graph (with ``dp``: ``dpsgd_head`` and
            ``apply_head_<optimizer>``, per-example clipping of the head's gradient); every
            other tensor keeps its bits and ``FitResult.trained`` lists the head's tensors.
        """
        if beats.labels is None or len(beats) == 0:
            raise InvalidBeatsError("training needs at least one labelled beat")
        if config.optimizer not in self.manifest.optimizers:
            raise ModelFileError(f"model directory was built without optimizer "
                                 f"{config.optimizer!r} (has "
                                 f"{', '.join(self.manifest.optimizers)}); rebuild it with "
                                 f"`fedbeat model build --optimizer {config.optimizer}`")
        start = self.params
        trained = self.manifest.layout.names
        if head_only:
            trained = self.head_tensors
            if dp is None:
                run = self._fit_head(beats, config, progress)
            else:
                run = self._fit_dpsgd(beats, config, dp, noise or SecureRandom(), progress,
                                      head=True)
        elif dp is None:
            run = self._fit_plain(beats, config, progress)
        else:
            run = self._fit_dpsgd(beats, config, dp, noise or SecureRandom(), progress)
        if not np.all(np.isfinite(run.params)):
            raise TrainingDivergedError("training diverged: parameters became NaN or infinite; "
                                        "lower the learning rate (or the clipping norm)")
        self.params = Params.from_flat(start.layout, run.params)
        return FitResult(self.params, self.params - start, run.losses, run.examples_seen,
                         run.dp, run.clipped_fraction, trained)

    @property
    def head_tensors(self) -> tuple[str, ...]:
        """The classifier head's tensors (everything after the ``join`` features).

        Raises
        ------
        ModelFileError
            The model directory was built without head-only graphs.
        """
        head = self.manifest.extra.get("head")
        if not isinstance(head, dict) or "head_features" not in self.manifest.files:
            raise ModelFileError(f"model directory {self.model_dir.path} has no head-only "
                                 "graphs; rebuild it with `fedbeat model build`")
        return tuple(str(name) for name in head["tensors"])

    @property
    def head_offset(self) -> int:
        """Where the head's slice of the flat parameter vector starts (it is the tail)."""
        head = set(self.head_tensors)
        return int(next(s.start for name, _, s in self.manifest.layout.slices() if name in head))

    def features(self, beats: Beats, *, batch_size: int = 1024) -> np.ndarray:
        """The frozen features the head reads, shape (n, F), with the current parameters."""
        runner = self.sessions.get("head_features")
        flat = self.params.to_flat()
        out = [runner.run({"window": beats.windows[i:i + batch_size],
                           "rr": beats.rr[i:i + batch_size], _PARAMS: flat})["features"]
               for i in range(0, len(beats), batch_size)]
        if not out:
            return np.zeros((0, int(runner.session.get_outputs()[0].shape[1])), np.float32)
        return np.concatenate(out)

    def predict(self, beats: Beats, *, batch_size: int = 1024) -> np.ndarray:
        """Class probabilities, shape (n, classes), with the current parameters."""
        runner = self.sessions.get("inference")
        flat = self.params.to_flat()
        out = [runner.run({"window": beats.windows[i:i + batch_size],
                           "rr": beats.rr[i:i + batch_size], _PARAMS: flat})["probs"]
               for i in range(0, len(beats), batch_size)]
        if not out:
            return np.zeros((0, len(self.manifest.inputs.classes)), dtype=np.float32)
        return np.concatenate(out)

    # -- internals ----------------------------------------------------------------------------

    def _constant_feed(self, config: TrainConfig, runner: GraphRunner,
                       start: Params) -> dict[str, np.ndarray]:
        hyper = {"lr": config.lr, "momentum": config.momentum,
                 "weight_decay": config.weight_decay, "beta1": config.beta1,
                 "beta2": config.beta2, "eps": config.eps, "fedprox_mu": config.fedprox_mu}
        feed = {k: np.asarray(v, dtype=np.float32) for k, v in hyper.items()
                if k in runner.input_names}
        weights = (uniform_class_weight(len(self.manifest.inputs.classes))
                   if config.class_weight is None
                   else np.asarray(config.class_weight, dtype=np.float32))
        if weights.shape != (len(self.manifest.inputs.classes),):
            raise ValueError(f"class_weight needs {len(self.manifest.inputs.classes)} values")
        feed["class_weight"] = weights
        feed[_GLOBAL] = start.to_flat()
        return feed

    def _dropout_masks(self, runner: GraphRunner, rng: np.random.Generator,
                       batch: int) -> dict[str, np.ndarray]:
        masks = {}
        for layer, rate in self.manifest.dropout.items():
            name = f"dropout_mask.{layer}"
            if name not in runner.input_names:
                continue
            shape = runner.input_shape(name)
            keep = rng.random((batch, *shape)) >= rate
            masks[name] = keep.astype(np.float32) / np.float32(1.0 - rate)
        return masks

    def _initial_state(self, optimizer: str) -> dict[str, np.ndarray]:
        size = self.params.layout.size
        return {f"state.{slot}": np.zeros(size, dtype=np.float32)
                for slot in _STATE_SLOTS[optimizer]}

    def _fit_plain(self, beats: Beats, config: TrainConfig,
                   progress: Progress | None) -> _Run:
        runner = self.sessions.get(f"train_{config.optimizer}")
        assert beats.labels is not None
        labels = beats.labels
        return self._epochs(runner, config, self._initial_state(config.optimizer), len(beats),
                            lambda idx: {"window": beats.windows[idx], "rr": beats.rr[idx],
                                         "labels": labels[idx]}, progress)

    def _fit_head(self, beats: Beats, config: TrainConfig,
                  progress: Progress | None) -> _Run:
        """As :meth:`_fit_plain`, on features computed once: the trunk does not change."""
        runner = self.sessions.get(f"train_head_{config.optimizer}")
        features = self.features(beats)
        head_size = self.params.layout.size - self.head_offset
        state = {f"state.{slot}": np.zeros(head_size, np.float32)
                 for slot in _STATE_SLOTS[config.optimizer]}
        assert beats.labels is not None
        labels = beats.labels
        return self._epochs(runner, config, state, len(beats),
                            lambda idx: {"features": features[idx], "labels": labels[idx]},
                            progress)

    def _epochs(self, runner: GraphRunner, config: TrainConfig, state: dict[str, np.ndarray],
                n: int, batch: Callable[[np.ndarray], dict[str, np.ndarray]],
                progress: Progress | None) -> _Run:
        """Shuffled mini-batch epochs of a fused training graph (the partial last batch is
        trained too); ``batch`` gives a batch's inputs from its example indices."""
        rng = np.random.default_rng(config.seed)
        feed = self._constant_feed(config, runner, self.params)
        params = self.params.to_flat()
        total = math.ceil(n / config.batch_size) * config.epochs
        losses = np.empty(total, dtype=np.float32)
        step = 0
        for _ in range(config.epochs):
            order = rng.permutation(n)
            for begin in range(0, n, config.batch_size):
                idx = order[begin:begin + config.batch_size]
                feed.update(batch(idx))
                feed["step"] = np.asarray(step + 1, dtype=np.float32)
                feed.update(self._dropout_masks(runner, rng, len(idx)))
                feed[_PARAMS] = params
                feed.update(state)
                out = runner.run(feed)
                params = out[f"new.{_PARAMS}"]
                state = {k: out[f"new.{k}"] for k in state}
                losses[step] = out["loss"]
                step += 1
                if progress:
                    progress(step, total)
        return _Run(params, losses, n * config.epochs)

    def _fit_dpsgd(self, beats: Beats, config: TrainConfig, dp: DpSgdConfig,
                   noise: RandomSource, progress: Progress | None, *,
                   head: bool = False) -> _Run:
        suffix = "_head" if head else ""
        grad_runner = self.sessions.get(f"dpsgd{suffix}")
        apply_runner = self.sessions.get(f"apply{suffix}_{config.optimizer}")
        data = ({"features": self.features(beats)} if head
                else {"window": beats.windows, "rr": beats.rr})
        rng = np.random.default_rng(config.seed)       # dropout masks only: not privacy-critical
        n = len(beats)
        q = dp.sample_rate if dp.sample_rate is not None else min(1.0, config.batch_size / n)
        expected_batch = q * n
        total = config.epochs * max(1, round(1.0 / q))
        grad_feed = self._constant_feed(config, grad_runner, self.params)
        grad_feed["clip_norm"] = np.asarray(dp.clip_norm, dtype=np.float32)
        apply_feed = self._constant_feed(config, apply_runner, self.params)
        params = self.params.to_flat()
        state = self._initial_state(config.optimizer)
        grad_size = params.size
        if head:
            grad_size -= self.head_offset
            state = {k: np.zeros(grad_size, dtype=np.float32) for k in state}
        std = dp.noise_multiplier * dp.clip_norm
        losses = np.full(total, np.nan, dtype=np.float32)
        seen = clipped = 0
        assert beats.labels is not None
        for step in range(total):
            idx = np.flatnonzero(noise.uniform(n) < q)          # Poisson sampling
            if idx.size:
                grad_feed.update({k: v[idx] for k, v in data.items()})
                grad_feed["labels"] = beats.labels[idx]
                grad_feed.update(self._dropout_masks(grad_runner, rng, idx.size))
                grad_feed[_PARAMS] = params
                out = grad_runner.run(grad_feed)
                total_grad = out["clipped_sum"]
                losses[step] = out["loss"]
                clipped += int(np.count_nonzero(out["per_example_norm"] > dp.clip_norm))
                seen += idx.size
            else:                                               # an empty sample still noises
                total_grad = np.zeros(grad_size, dtype=np.float32)
            noisy = total_grad + noise.normal(total_grad.shape, std)
            apply_feed["grad"] = (noisy / expected_batch).astype(np.float32)
            apply_feed[_PARAMS] = params
            apply_feed.update(state)
            apply_feed["step"] = np.asarray(step + 1, dtype=np.float32)
            out = apply_runner.run(apply_feed)
            params = out[f"new.{_PARAMS}"]
            state = {k: out[f"new.{k}"] for k in state}
            if progress:
                progress(step + 1, total)
        report = DpSgdReport(dp.noise_multiplier, q, total, dp.clip_norm)
        return _Run(params, losses, seen, report, clipped / seen if seen else 0.0)
