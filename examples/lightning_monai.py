"""MONAI's UNet and DiceCELoss in Lightning on real MRI (white matter of brain-folder's axial MNI152
slices), with rlsched's shipped LR controller and at a constant LR, same seed and epochs: prints both test
Dices. Needs pip install -e ".[examples]"; run from the repository root (it exports the slices if missing)."""

import argparse
from pathlib import Path

import lightning.pytorch as pl
import torch
from monai.losses import DiceCELoss
from monai.metrics import compute_dice
from monai.networks.nets import UNet
from torch.utils.data import DataLoader, TensorDataset

from rlsched.brain_folder import export_folder
from rlsched.config import load_config
from rlsched.integrations.lightning import RLSchedulerCallback
from rlsched.seg.sources import make_dataset


class Segmenter(pl.LightningModule):
    def __init__(self, lr: float) -> None:
        super().__init__()
        self.lr, self.loss = lr, DiceCELoss(sigmoid=True)  # one channel of logits: a binary mask
        self.net = UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=(8, 16, 32), strides=(2, 2))

    def step(self, batch: list[torch.Tensor], stage: str) -> torch.Tensor:
        loss = self.loss(logits := self.net(batch[0]), batch[1])
        dice = compute_dice((logits > 0).float(), batch[1], ignore_empty=False).nanmean()
        self.log_dict({f"{stage}_loss": loss, f"{stage}_dice": dice}, on_step=False, on_epoch=True)
        return loss

    def training_step(self, batch, _):
        return self.step(batch, "train")  # noqa: E704

    def validation_step(self, batch, _):
        return self.step(batch, "val")  # noqa: E704

    def test_step(self, batch, _):
        return self.step(batch, "test")  # noqa: E704

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)  # noqa: E704


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--images", type=int, default=73, help="training images (of 73)")
    parser.add_argument("--lr", type=float, default=1e-3, help="the constant LR, and the controller's first")
    args = parser.parse_args()
    cfg = load_config(
        "brain-folder", {"data.task": "binary", "data.classes": 1, "data.mask_map": {"0": 0, "1": 0, "2": 1}}
    )  # white matter
    if not Path(cfg.data.root).is_dir():
        export_folder(cfg.data.root)  # the template's axial slices as images/ + masks/ PNGs, offline
    data = make_dataset(cfg.data, seed=0)
    split = {
        "train": (data.train_images[: args.images], data.train_masks[: args.images]),
        "val": (data.val_images, data.val_masks),
        "test": (data.test_images, data.test_masks),
    }
    for name, callbacks in (("rlsched controller", [RLSchedulerCallback()]), ("constant LR", [])):
        pl.seed_everything(0, verbose=False)
        loaders = {
            k: DataLoader(TensorDataset(x, y[:, None].float()), batch_size=8, shuffle=k == "train")
            for k, (x, y) in split.items()
        }
        trainer = pl.Trainer(
            max_epochs=args.epochs,
            callbacks=callbacks,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
        )
        trainer.fit(model := Segmenter(args.lr), loaders["train"], loaders["val"])
        print(f"{name}: test Dice {trainer.test(model, loaders['test'], verbose=False)[0]['test_dice']:.3f}")
