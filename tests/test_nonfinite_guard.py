"""NonFiniteGuard on its own: verdicts, raised errors, skipped counts and undone running statistics."""

import warnings

import pytest
import torch

import pyrovi
from pyrovi.train import NonFiniteGuard


def _setup(mode="raise", on_device=None, fused=False):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1, fused=fused)
    guard = NonFiniteGuard(mode, on_device=on_device)
    running = [b for b in net[1].buffers()]
    guard.start_fit(running, net.named_parameters)
    guard.start_epoch(first_step=10)
    return net, optimizer, guard


def _step(net, guard, x, poison_loss=False):
    guard.before_forward()
    loss = net(x).sum()
    if poison_loss:
        loss = loss * float("nan")
    loss.backward()
    guard.watch(loss)
    return loss


def test_modes_are_checked():
    with pytest.raises(ValueError, match="on_nonfinite='ignore'"):
        NonFiniteGuard("ignore")


def test_a_finite_step_is_taken_and_nothing_watched_has_no_verdict():
    net, optimizer, guard = _setup()
    assert guard.check(optimizer, step=10, epoch=0) is None  # no loss watched
    _step(net, guard, torch.randn(5, 3))
    assert guard.check(optimizer, step=10, epoch=0) is True
    assert guard.check(optimizer, step=10, epoch=0) is None  # the watched loss is judged once
    assert guard.end_epoch(epoch=0) == 0 and guard.n_skipped == 0


def test_raise_names_the_loss_or_the_parameter_and_undoes_the_running_statistics():
    net, optimizer, guard = _setup("raise")
    before = [b.clone() for b in net[1].buffers()]
    _step(net, guard, torch.randn(5, 3), poison_loss=True)
    with pytest.raises(pyrovi.NumericalFaultError) as info:
        guard.check(optimizer, step=12, epoch=3)
    assert (info.value.step, info.value.epoch, info.value.culprit) == (12, 3, "loss")
    assert all(torch.equal(a, b) for a, b in zip(before, net[1].buffers()))

    net, optimizer, guard = _setup("raise")
    _step(net, guard, torch.randn(5, 3))
    net[2].weight.grad[0, 0] = float("inf")
    with pytest.raises(pyrovi.NumericalFaultError, match="the gradient of 2.weight") as info:
        guard.check(optimizer, step=12, epoch=3)
    assert info.value.culprit == "2.weight"


def test_skip_drops_the_gradients_counts_the_step_and_warns_at_the_end():
    net, optimizer, guard = _setup("skip")
    before = [b.clone() for b in net[1].buffers()]
    _step(net, guard, torch.randn(5, 3), poison_loss=True)
    assert guard.check(optimizer, step=10, epoch=0) is False
    assert all(p.grad is None for p in net.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, net[1].buffers()))
    assert guard.end_epoch(epoch=0) == 1
    guard.start_epoch(first_step=11)
    assert guard.end_epoch(epoch=1) == 0
    assert guard.n_skipped == 1
    with pytest.warns(UserWarning, match="1 optimiser steps"):
        guard.end_fit()
    guard.start_fit([], net.named_parameters)
    assert guard.n_skipped == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        guard.end_fit()  # nothing skipped: no warning


def test_on_the_device_the_flag_goes_to_the_fused_optimiser_without_a_host_read():
    net, optimizer, guard = _setup("skip", on_device=True, fused=True)
    params = [p.detach().clone() for p in net.parameters()]
    _step(net, guard, torch.randn(5, 3), poison_loss=True)
    verdict = guard.check(optimizer, step=10, epoch=0)
    assert isinstance(verdict, torch.Tensor) and not bool(verdict)
    optimizer.step()  # found_inf set: the fused kernel leaves every parameter as it was
    assert all(torch.equal(a, b) for a, b in zip(params, net.parameters()))
    assert guard.end_epoch(epoch=0) == 1


def test_raise_on_the_device_halts_the_epoch_and_names_the_first_faulty_step_at_its_end():
    net, optimizer, guard = _setup("raise", on_device=True, fused=True)
    for step, poison in ((10, False), (11, True), (12, False)):
        optimizer.zero_grad()
        _step(net, guard, torch.randn(5, 3), poison_loss=poison)
        verdict = guard.check(optimizer, step=step, epoch=2)  # never raises here: no host read
        optimizer.step()
        assert bool(verdict) == (step == 10)
    with pytest.raises(pyrovi.NumericalFaultError) as info:
        guard.end_epoch(epoch=2)
    assert (info.value.step, info.value.epoch, info.value.culprit) == (11, 2, "loss")
