"""Optimisers (SGD with momentum/Nesterov/weight decay, Adam) and learning-rate schedules.

The update itself is an op (one fused kernel per parameter on the GPU) whose plan per parameter
the optimiser keeps, with the per-parameter state arrays on the same backend.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .ops.optim import (adam_hyper, adam_prepare_plan, adam_update_plan, sgd_hyper,
                        sgd_update_plan)

__all__ = ["SGD", "Adam", "ConstantLR", "StepLR", "CosineLR", "make_schedule"]


def _check_number(value, name, opt, positive=False):
    """A finite real >= 0 (> 0 with ``positive``), or a ValueError naming it: a NaN or inf
    hyper-parameter would turn every parameter into NaN at the first step."""
    ok = (isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
          and math.isfinite(value) and (value > 0 if positive else value >= 0))
    if not ok:
        raise ValueError(f"{opt}: {name} must be a finite number {'>' if positive else '>='} "
                         f"0, got {value!r}")


class _Optimizer:
    state_names: tuple = ()

    def __init__(self, params, lr):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: no parameters to optimise")
        _check_number(lr, "lr", type(self).__name__, positive=True)
        self.lr = float(lr)
        self.steps = 0
        # The state of a model's parameters (nn.flat.FlatParameters, all of them, in order)
        # lives in flat buffers of the same layout, so one launch updates every parameter.
        flat = self.params[0].flat
        self.flat = flat if flat is not None and flat.intact_list(self.params) else None
        if self.flat is not None:
            self.flat_state = {n: self.backend.zeros((flat.size,), flat.dtype)
                               for n in self.state_names}
            self.state = {n: flat.views(buf) for n, buf in self.flat_state.items()}
        else:
            self.state = {n: [self.backend.zeros(p.shape, np.float32) for p in self.params]
                          for n in self.state_names}

    def _plans(self, hp, make):
        """The update plans for the hyper-parameters ``hp`` (made at the first step, and
        again only if ``hp`` changes: the shapes are fixed): one over the flat buffers when
        every parameter is still its view with its gradient in place (``flat`` is then
        True), else one per parameter."""
        flat = self.flat is not None and self.flat.intact(self.params)
        held = self.__dict__.get("_update_plans")
        if held is None or held[0] != (hp, flat):
            arrays = [self.flat.data] if flat else [p.data for p in self.params]
            held = self._update_plans = ((hp, flat), [make(a) for a in arrays])
        return flat, held[1]

    def device_lr(self):
        """On a device: the learning rate where the kernels read it, a one-element array
        written here only when ``lr`` changed (so a step copies nothing to the device, and a
        captured step follows a schedule); None on the CPU."""
        if self.backend.kind != "device":
            return None
        held = self.__dict__.get("_lr_dev")
        if held is None or held[0] != self.lr:
            arr = None if held is None else held[1]
            value = self.backend.asarray(np.array([self.lr], self.lr_dtype),
                                         dtype=self.lr_dtype)
            if arr is None:
                arr = value
            else:
                arr[...] = value  # in place: a captured graph reads this array
            held = self._lr_dev = (self.lr, arr)
        return held[1]

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def state_dict(self, B):
        arrays = {f"{n}.{i}": B.to_numpy(a) for n, lst in self.state.items()
                  for i, a in enumerate(lst)}
        return arrays, {"type": type(self).__name__, "lr": self.lr, "steps": self.steps}

    def load_state_dict(self, B, arrays, meta):
        if meta.get("type") != type(self).__name__:
            raise ValueError(f"optimizer state is for {meta.get('type')!r}, not "
                             f"{type(self).__name__}")
        for n, lst in self.state.items():
            for i, a in enumerate(lst):
                key = f"{n}.{i}"
                if key not in arrays or arrays[key].shape != a.shape:
                    raise ValueError(f"optimizer state {key!r} is missing or has the wrong shape")
                a[...] = B.asarray(arrays[key].astype(np.float32))  # into its (flat) view
        self.lr, self.steps = float(meta["lr"]), int(meta["steps"])


class SGD(_Optimizer):
    state_names = ("velocity",)
    lr_dtype = np.float32  # sgd_update multiplies in float32

    def __init__(self, params, lr, momentum=0.0, nesterov=False, weight_decay=0.0, backend=None):
        from .backends import get_backend
        self.backend = get_backend(backend)
        _check_number(momentum, "momentum", "SGD")
        _check_number(weight_decay, "weight_decay", "SGD")
        if nesterov and momentum <= 0:
            raise ValueError("SGD: nesterov=True needs momentum > 0")
        self.momentum, self.nesterov, self.weight_decay = momentum, nesterov, weight_decay
        super().__init__(params, lr)

    def step(self):
        _check_number(self.lr, "lr", "SGD")
        self.steps += 1
        hp = sgd_hyper(self.momentum, self.weight_decay, self.nesterov)
        flat, plans = self._plans(hp, lambda a: sgd_update_plan(self.backend, a.shape, a.dtype,
                                                                hp))
        lr_dev = self.device_lr()
        if flat:
            plans[0].run(self.flat.data, self.flat.grad, self.flat_state["velocity"], self.lr,
                         lr_dev)
            return
        for plan, p, v in zip(plans, self.params, self.state["velocity"]):
            plan.run(p.data, p.grad, v, self.lr, lr_dev)


class Adam(_Optimizer):
    state_names = ("m", "v")
    lr_dtype = np.float64  # adam_prepare divides in float64, as the host did

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 backend=None):
        from .backends import get_backend
        self.backend = get_backend(backend)
        if not (len(betas) == 2 and all(isinstance(b, numbers.Real) and 0.0 <= b < 1.0
                                        for b in betas)):
            raise ValueError(f"Adam: betas must be two numbers in [0, 1), got {betas!r}")
        _check_number(eps, "eps", "Adam")
        _check_number(weight_decay, "weight_decay", "Adam")
        self.betas, self.eps, self.weight_decay = tuple(betas), eps, weight_decay
        super().__init__(params, lr)

    def step(self):
        _check_number(self.lr, "lr", "Adam")
        self.steps += 1
        hp = adam_hyper(*self.betas, self.eps, self.weight_decay)
        flat, plans = self._plans(hp, lambda a: adam_update_plan(self.backend, a.shape, a.dtype,
                                                                 hp))
        scalars = self._device_corrections(hp)
        if flat:
            plans[0].run(self.flat.data, self.flat.grad, self.flat_state["m"],
                         self.flat_state["v"], self.lr, self.steps, scalars)
            return
        for plan, p, m, v in zip(plans, self.params, self.state["m"], self.state["v"]):
            plan.run(p.data, p.grad, m, v, self.lr, self.steps, scalars)

    def _device_corrections(self, hp):
        """On a device: the step count lives on the device too, advanced there with the
        step's bias corrections (one launch), so a captured step needs no host value; the
        float32[2] they are in (None on the CPU, whose updates take the host count)."""
        if self.backend.kind != "device":
            return None
        if self.__dict__.get("_device_step") is None:
            self._device_step = self.backend.asarray(np.array([self.steps - 1], np.int32),
                                                     dtype=np.int32)
            self._scalars = self.backend.zeros((2,), np.float32)
        adam_prepare_plan(self.backend, hp).run(self._device_step, self._scalars,
                                                self.device_lr())
        return self._scalars

    def load_state_dict(self, B, arrays, meta):
        super().load_state_dict(B, arrays, meta)
        self._device_step = None  # made again from the loaded count at the next step


class ConstantLR:
    def __init__(self, base_lr):
        self.base_lr = base_lr

    def lr_at(self, epoch):
        return self.base_lr


class StepLR(ConstantLR):
    """lr = base * gamma ** (epoch // step_size)."""

    def __init__(self, base_lr, step_size, gamma=0.1):
        super().__init__(base_lr)
        if step_size < 1:
            raise ValueError(f"StepLR: step_size must be >= 1, got {step_size}")
        self.step_size, self.gamma = step_size, gamma

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class CosineLR(ConstantLR):
    """Cosine annealing from base_lr at epoch 0 to min_lr at epoch ``total``."""

    def __init__(self, base_lr, total, min_lr=0.0):
        super().__init__(base_lr)
        if total < 1:
            raise ValueError(f"CosineLR: total must be >= 1, got {total}")
        self.total, self.min_lr = total, min_lr

    def lr_at(self, epoch):
        t = min(epoch, self.total) / self.total
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * t))


def make_schedule(name, base_lr, epochs, step_size=None, gamma=0.1):
    if name in (None, "constant"):
        return ConstantLR(base_lr)
    if name == "step":
        return StepLR(base_lr, step_size or max(1, epochs // 3), gamma)
    if name == "cosine":
        return CosineLR(base_lr, max(1, epochs))
    raise ValueError(f"lr schedule must be constant, step or cosine; got {name!r}")
