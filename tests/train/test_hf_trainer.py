"""tightfit optimizers as drop-ins for transformers.Trainer (documented in train/hf.py)."""

import pytest
import torch

import tightfit
from tightfit.train.errors import TrainInputError
from tightfit.train.hf import trainer_optimizer
from tightfit.train.model_loading import bundled_model


class Blocks(torch.utils.data.Dataset):
    def __init__(self, n=8, seq=16):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 257, (n, seq), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def make_trainer(tmp_path, model, **kwargs):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2,
                             use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True)
    return Trainer(model=model, args=args, train_dataset=Blocks(), **kwargs)


def unwrap(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it


DROP_INS = {
    "optimizer_cls_and_kwargs by name": lambda model: {"optimizer_cls_and_kwargs": trainer_optimizer("adamw_8bit")},
    "optimizer_cls_and_kwargs by class": lambda model: {
        "optimizer_cls_and_kwargs": (tightfit.AdamW, {"state": "8bit", "lr": 1e-2})},
    "optimizers=(opt, None)": lambda model: {
        "optimizers": (tightfit.create_optimizer("adamw_8bit", model.parameters(), lr=1e-2), None)},
}


@pytest.mark.parametrize("how", DROP_INS)
def test_trainer_runs_a_tightfit_optimizer(tmp_path, how, one_thread):
    model = bundled_model("llama-micro", seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = make_trainer(tmp_path, model, **DROP_INS[how](model))
    trainer.train()
    opt = unwrap(trainer.optimizer)
    assert isinstance(opt, tightfit.AdamW)
    assert opt.param_groups[0]["state"] == "8bit"
    quantized = [s for s in opt.state.values() if s["exp_avg"].codec == "8bit"]
    assert quantized  # the 64x64 matrices hold 8-bit moments
    assert int(next(iter(opt.state.values()))["step"]) == 3
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert trainer.lr_scheduler.last_epoch == 3  # the Trainer's scheduler drove the tightfit optimizer


def test_trainer_optimizer_rejects_unknown_names():
    with pytest.raises(TrainInputError, match="unknown optimizer 'adamw_2bit'"):
        trainer_optimizer("adamw_2bit")
