"""What an exported graph puts in front of the model: the raw-input frame, resize and
normalization, or the resize from a recipe's `data.decode_size`."""

from __future__ import annotations

import torch
from torch import nn

from cvtool.data.loaders import Normalize, resize


class RawInputModel(nn.Module):
    """uint8 N x H x W x C -> the model frame of `resize` (crop: the centred min(H, W) square;
    pad: zeros around to the centred max(H, W) square; `cvtool.tasks.frame`) -> bilinear
    (antialiased, like PIL) resize to size x size -> (x / 255 - mean) / std -> the model. At
    H = W = size both steps are the identity, so images decoded at the model's size (what
    `cvtool predict` feeds) match the checkpoint path exactly; other sizes differ from PIL's
    uint8 resize by under one pixel level. The resize and normalization are training's own
    (`data.loaders.resize`, `Normalize.standardize`): images decoded at a recipe's
    `data.decode_size` (what `cvtool predict` feeds then) go through what training did."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float], size: int,
                 resize: str = "squash") -> None:
        super().__init__()
        self.model, self.size, self.resize = model, size, resize
        self.normalize = Normalize(mean, std, size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float()
        height, width = x.shape[2], x.shape[3]
        if self.resize == "crop":  # the offsets of tasks.frame.frame_box, as symbolic shapes
            side = torch.sym_min(height, width)
            top, left = (height - side) // 2, (width - side) // 2
            x = x[:, :, top:top + side, left:left + side]
        elif self.resize == "pad":
            side = torch.sym_max(height, width)
            top, left = (side - height) // 2, (side - width) // 2
            x = nn.functional.pad(x, (left, side - width - left, top, side - height - top))
        torch._check(x.shape[2] > 0)  # lets torch.export prove the resize input is not empty
        torch._check(x.shape[3] > 0)
        x = resize(x, self.size)  # always: the graph takes any size
        return self.model(self.normalize.standardize(x))


class ResizedInputModel(nn.Module):
    """Normalized N x C x S x S at the recipe's `data.decode_size` -> the model's size -> the model."""

    def __init__(self, model: nn.Module, size: int) -> None:
        super().__init__()
        self.model, self.size = model, size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(resize(images, self.size))
