"""Transformer tokens as feature maps: the token layout a network states in its own
configuration, and the reshape between its tokens and an N x C x h x w grid, both ways.

Three layouts of a layer's output are mapped to the grid the attention mechanism reads:

* ``"grid"``: already N x C x h x w (CNNs, MaxViT); kept as it is.
* ``"channels_last"``: N x h x w x C (Swin, torchvision's and timm's); permuted.
* ``"sequence"``: N x (P + h*w) x C tokens (ViT, DeiT), the first P being the class,
  distillation and register tokens ("prefix tokens"). They are set aside and the patch
  tokens reshaped row by row to the patch grid, h = H // patch height and w = W // patch
  width of the H x W image.

The patch size and the number of prefix tokens come from the network: torchvision's
``VisionTransformer`` (``patch_size``, one class token), timm's (``patch_embed.patch_size``,
``num_prefix_tokens``), or any module with the attributes ``patch_size`` and
``num_prefix_tokens``. Swin is recognised as channels-last by its class (torchvision) or its
``output_fmt == "NHWC"`` (timm). A network that states none of these gets no token layout:
its 3-D outputs are refused, since nothing says where the patches lie.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision
from torch import nn

from utils.core.errors import UserValueError

__all__ = ["LAYOUTS", "TokenConfig", "TokenLayout", "default_token_layers", "token_config"]

LAYOUTS = ("grid", "channels_last", "sequence")


@dataclass(frozen=True)
class TokenConfig:
    """What a network says about its tokens.

    Attributes:
        patch_size: (height, width) in pixels of one patch token; None when the network
            states none (Swin's grid needs none: its maps keep their spatial axes).
        num_prefix_tokens: class, distillation and register tokens before the patch tokens.
        channels_last: the network's 4-D maps are N x h x w x C.
        source: where the configuration was read, for messages.
    """

    patch_size: tuple[int, int] | None
    num_prefix_tokens: int
    channels_last: bool
    source: str


def token_config(network: nn.Module) -> TokenConfig | None:
    """The token configuration ``network`` states (see the module docstring); None for a
    network that states none (a CNN)."""
    if isinstance(network, torchvision.models.VisionTransformer):
        return TokenConfig(_pair(network.patch_size), 1, False, "torchvision VisionTransformer")
    if isinstance(network, torchvision.models.SwinTransformer):
        return TokenConfig(None, 0, True, "torchvision SwinTransformer")
    channels_last = getattr(network, "output_fmt", None) == "NHWC"
    patch_embed = getattr(network, "patch_embed", None)
    patch_size = getattr(patch_embed, "patch_size", None) or getattr(network, "patch_size", None)
    prefix = getattr(network, "num_prefix_tokens", None)
    if channels_last:
        return TokenConfig(_pair(patch_size) if patch_size else None, 0, True, type(network).__name__)
    if patch_size is not None and isinstance(prefix, int):
        return TokenConfig(_pair(patch_size), prefix, False, type(network).__name__)
    return None


def default_token_layers(network: nn.Module) -> list[str]:
    """The layers L-CAM may read on a transformer by default, in order of preference: the
    output of its last block, after the network's final norm where it has one (torchvision
    ViT ``encoder.ln``, Swin ``norm``, timm ``norm``), then the output of the block before
    the last (``encoder.layers.encoder_layer_10`` of ViT-B, ``blocks.10`` of timm's), for a
    network whose head reads only its class token after the last block. Empty for a network
    with no token configuration."""
    if token_config(network) is None:
        return []
    blocks_name, blocks = _blocks(network)
    if isinstance(network, torchvision.models.VisionTransformer):
        last = ["encoder.ln"]
    else:
        norm = getattr(network, "norm", None)
        has_norm = isinstance(norm, nn.Module) and not isinstance(norm, nn.Identity)
        last = ["norm"] if has_norm else [f"{blocks_name}.{_child_name(blocks, -1)}"] if blocks is not None else []
    before_last = [f"{blocks_name}.{_child_name(blocks, -2)}"] if blocks is not None and len(blocks) > 1 else []
    return last + before_last


def _blocks(network: nn.Module) -> tuple[str, nn.Module | None]:
    """The sequence of blocks of a transformer and its dotted name."""
    if isinstance(network, torchvision.models.VisionTransformer):
        return "encoder.layers", network.encoder.layers
    for name in ("blocks", "layers", "stages"):
        blocks = getattr(network, name, None)
        if isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks):
            return name, blocks
    return "", None


def _child_name(sequence: nn.Module, index: int) -> str:
    return list(dict(sequence.named_children()))[index]


@dataclass(frozen=True)
class TokenLayout:
    """How one layer's output maps to an N x C x h x w grid (``kind`` one of :data:`LAYOUTS`).

    Attributes:
        kind: ``"grid"``, ``"channels_last"`` or ``"sequence"``.
        patch_size: (height, width) of a patch in pixels (``"sequence"`` only).
        num_prefix_tokens: tokens before the patch tokens (``"sequence"`` only).
    """

    kind: str
    patch_size: tuple[int, int] | None = None
    num_prefix_tokens: int = 0

    @classmethod
    def of_output(cls, output: torch.Tensor, config: TokenConfig | None, layer: str) -> TokenLayout:
        """The layout of ``output``, the value of ``layer`` for a probe image.

        Raises:
            ValueError: an output that is neither 4-D nor 3-D, or 3-D tokens of a network that
                states no patch size.
        """
        if output.dim() == 4:
            return cls("channels_last" if config is not None and config.channels_last else "grid")
        if output.dim() == 3:
            if config is None or config.patch_size is None or config.channels_last:
                raise UserValueError(
                    f"the output of 'layer' {layer!r} is a sequence of tokens (shape {tuple(output.shape)}), "
                    "but the network states no patch size and number of prefix tokens ('patch_size' and "
                    "'num_prefix_tokens' attributes), so its tokens cannot be mapped to a grid of the image"
                )
            return cls("sequence", config.patch_size, config.num_prefix_tokens)
        raise UserValueError(
            f"the output of 'layer' {layer!r} must be N x C x h x w feature maps, N x h x w x C maps "
            f"(channels last) or N x L x C tokens, got shape {tuple(output.shape)}"
        )

    @property
    def has_prefix_tokens(self) -> bool:
        """Whether :meth:`to_grid` sets tokens aside that :meth:`to_tokens` needs back."""
        return self.kind == "sequence" and self.num_prefix_tokens > 0

    def grid_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the patch grid of an image of ``image_size`` (``"sequence"`` only)."""
        (height, width), (patch_height, patch_width) = image_size, self.patch_size
        return height // patch_height, width // patch_width

    def to_grid(self, output: torch.Tensor, image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The layer's output as N x C x h x w maps, and the prefix tokens set aside (N x P x C;
        None when there are none).

        Raises:
            ValueError: the number of patch tokens is not h * w of ``image_size``.
        """
        if self.kind == "grid":
            return output, None
        if self.kind == "channels_last":
            return output.permute(0, 3, 1, 2), None
        height, width = self.grid_size(tuple(image_size))
        patches = output[:, self.num_prefix_tokens :]
        if patches.size(1) != height * width:
            raise UserValueError(
                f"{output.size(1)} tokens - {self.num_prefix_tokens} prefix tokens = {patches.size(1)} patch tokens, "
                f"not the {height} x {width} patches of a {image_size[0]} x {image_size[1]} image with "
                f"{self.patch_size[0]} x {self.patch_size[1]} patches: the tokens cannot be mapped to the image's grid"
            )
        grid = patches.transpose(1, 2).reshape(output.size(0), output.size(2), height, width)
        prefix = output[:, : self.num_prefix_tokens] if self.num_prefix_tokens else None
        return grid, prefix

    def to_tokens(self, grid: torch.Tensor, prefix_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """The inverse of :meth:`to_grid`: ``grid`` (N x C x h x w) back in the layer's layout,
        with the prefix tokens put back in front.

        Raises:
            ValueError: the layout has prefix tokens and none are given.
        """
        if self.kind == "grid":
            return grid
        if self.kind == "channels_last":
            return grid.permute(0, 2, 3, 1)
        patches = grid.flatten(2).transpose(1, 2)
        if not self.num_prefix_tokens:
            return patches
        if prefix_tokens is None:
            raise UserValueError(
                f"the network also reads its {self.num_prefix_tokens} class/distillation/register token(s) after "
                "this layer; feature maps alone cannot be classified (classify the image with the model instead)"
            )
        return torch.cat([prefix_tokens.to(patches.dtype), patches], dim=1)


def _pair(size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)
