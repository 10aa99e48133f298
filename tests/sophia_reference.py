"""SophiaG written out from Liuhong99/Sophia's sophia.py (not a package: it cannot be
installed as a reference): decay, momentum, clipped ratio; h refreshed apart."""

import torch


class ReferenceSophiaG:
    """sophia.py's SophiaG written out: decay, momentum, clipped ratio; h refreshed apart."""

    def __init__(self, params, lr, betas, rho, weight_decay, bs):
        self.params, self.lr, self.betas, self.rho, self.wd, self.bs = list(params), lr, betas, rho, weight_decay, bs
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.hessian = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def update_hessian(self):
        for p, h in zip(self.params, self.hessian):
            if p.grad is not None:
                h.mul_(self.betas[1]).addcmul_(p.grad, p.grad, value=1 - self.betas[1])

    @torch.no_grad()
    def step(self):
        for p, m, h in zip(self.params, self.exp_avg, self.hessian):
            if p.grad is None:
                continue
            p.mul_(1 - self.lr * self.wd)
            m.mul_(self.betas[0]).add_(p.grad, alpha=1 - self.betas[0])
            ratio = (m.abs() / (self.rho * self.bs * h + 1e-15)).clamp(max=1)
            p.addcmul_(m.sign(), ratio, value=-self.lr)

    def zero_grad(self):
        for p in self.params:
            p.grad = None
