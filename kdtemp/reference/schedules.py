"""Pure-Python twins of the schedules in :mod:`kdtemp.schedules` that are more
than a one-line formula: Annealing-KD's stepping rule, written as the authors'
training loop runs it (a counter incremented epoch by epoch), with and without
kdtemp's cap. Used as test oracles for :class:`kdtemp.AnnealingSchedule`.
"""
from __future__ import annotations

__all__ = ["annealing_t_prime_authors", "annealing_phi"]


def annealing_t_prime_authors(epoch: int, max_temperature: int,
                              phase1_epochs: int) -> int:
    """The authors' counter ``T'`` during phase-1 epoch ``epoch`` (0-based).

    Their loop starts with ``T' = 1`` and, at the start of each epoch, increments
    it when ``epoch % (phase1_epochs // max_temperature) == 0 and epoch > 0``. Not
    capped: when ``phase1_epochs`` is not a multiple of ``max_temperature`` it
    exceeds ``max_temperature`` in the last epochs (``Phi = T'/tau_max > 1``).
    With ``phase1_epochs < max_temperature`` the period is 0 and, as in their
    code, this raises ``ZeroDivisionError``.
    """
    k = phase1_epochs // max_temperature
    t_prime = 1
    for e in range(epoch + 1):
        if e % k == 0 and e > 0:
            t_prime += 1
    return t_prime


def annealing_phi(epoch: int, max_temperature: int, phase1_epochs: int,
                  phase2_epochs: int) -> float:
    r"""kdtemp's ``Phi`` at epoch ``epoch`` (0-based): the authors' loop with
    ``T'`` stopped at ``max_temperature`` (remainder epochs spent at
    :math:`\Phi = 1`), then ``T'/tau_max``; 1.0 in phase 2.

    With fewer phase-1 epochs than temperatures (``phase1_epochs <
    max_temperature``), ``T'`` at epoch ``e`` is the largest ``j`` in
    ``1 .. tau_max`` whose step ``j - 1`` falls at or before ``e`` when the
    ``tau_max - 1`` steps are laid evenly over the ``phase1_epochs - 1`` epoch
    boundaries, i.e. ``(j - 1) (phase1_epochs - 1) <= e (tau_max - 1)``; a single
    phase-1 epoch is at ``T' = tau_max``.

    .. math::

        \Phi = 1 - (T - 1)/\tau_{max} = T'/\tau_{max}
    """
    if not 0 <= epoch < phase1_epochs + phase2_epochs:
        raise ValueError(f"`epoch` out of range: {epoch!r}")
    if epoch >= phase1_epochs:
        return 1.0
    if phase1_epochs < max_temperature:
        if phase1_epochs == 1:
            return max_temperature / max_temperature
        t_prime = max(j for j in range(1, max_temperature + 1)
                      if (j - 1) * (phase1_epochs - 1) <= epoch * (max_temperature - 1))
        return t_prime / max_temperature
    k = phase1_epochs // max_temperature
    t_prime = 1
    for e in range(epoch + 1):
        if e % k == 0 and e > 0 and t_prime < max_temperature:
            t_prime += 1
    return t_prime / max_temperature
