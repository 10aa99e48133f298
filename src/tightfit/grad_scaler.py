"""torch.amp.GradScaler with offloaded groups.

Offload copies each grad to the host during backward and copies it again in ``step()``
only if the grad changed since (another ``_version`` or tensor). GradScaler unscales grads
in place with an op that does not bump ``_version``, so a copy made during backward would
still hold the scaled grad. An optimizer with offloaded groups therefore declares
``_step_supports_amp_scaling``: ``GradScaler.step`` then hands over its ``found_inf`` and
``grad_scale`` instead of unscaling, and ``step()`` (``apply_grad_scaler``) skips the step
on inf/NaN, unscales with GradScaler's own op and reciprocal, which leaves exactly the
grads GradScaler would have left, and tells the placements that every grad changed.

Unscaling by hand (``scaler.unscale_(opt)``) and then calling ``opt.step()`` directly,
without ``scaler.step(opt)``, is not seen: torch's documented pattern is ``scaler.step``.
"""

from __future__ import annotations

from typing import Any

import torch


def hands_over(opt) -> bool:
    """True when GradScaler.step handed its scale to this step() (it sets ``found_inf``)."""
    return getattr(opt, "found_inf", None) is not None


def apply_grad_scaler(opt, groups: list[dict[str, Any]]) -> bool:
    """Unscale the groups' grads as GradScaler.unscale_ would; False when the step must be
    skipped (inf/NaN found). Marks every placement's grad copies stale."""
    for group in groups:
        opt.placement_for(group).grads_changed()
    if float(opt.found_inf) > 0:  # GradScaler's own path skips optimizer.step() then (it syncs too)
        return False
    scale = getattr(opt, "grad_scale", None)
    if scale is None:  # scaler.unscale_(opt) already ran: the grads are unscaled, in place
        return True
    inv_scale = scale.double().reciprocal().float()
    by_device: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for group in groups:
        for p in group["params"]:
            if p.grad is not None:
                by_device.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
    for (device, _), grads in by_device.items():
        found = torch.zeros((), dtype=torch.float32, device=device)
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found, inv_scale.to(device))
    return True
