"""The denoiser of points (``model.arch: mlp | linear``), a diffusers model like the UNet it stands in for.

It is called as the UNet is, ``net(sample, timestep, encoder_hidden_states=...).sample``, and saved
and loaded with diffusers' ``save_pretrained`` / ``from_pretrained`` under ``unet/``, so the chain's
training, sampling, checkpoints and run directory treat it exactly as a UNet. ``mlp``: the point, a
sinusoidal time embedding (diffusers' ``get_timestep_embedding``) and the caption embedding (CLIP's
hidden states averaged over tokens) through a few SiLU layers. ``linear``: ``W x`` and nothing else,
the optimal denoiser class of Zhu et al.'s linear-DAE theorem (no time, no caption).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput


@dataclass
class VectorDenoiserOutput(BaseOutput):
    sample: torch.Tensor


class VectorDenoiser(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, dim: int = 2, linear: bool = False, hidden: int = 128, layers: int = 3,
                 time_channels: int = 32, cross_attention_dim: int = 64):
        super().__init__()
        if linear:
            self.matrix = torch.nn.Linear(dim, dim, bias=False)
            return
        self.cond_proj = torch.nn.Linear(cross_attention_dim, hidden)
        self.time_proj = torch.nn.Linear(time_channels, hidden)
        self.in_proj = torch.nn.Linear(dim, hidden)
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(hidden, hidden) for _ in range(layers))
        self.out = torch.nn.Linear(hidden, dim)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.config.dim,)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states=None,
                return_dict: bool = True):
        if self.config.linear:
            out = self.matrix(sample)
        else:
            t = timestep if torch.is_tensor(timestep) else torch.tensor([timestep], device=sample.device)
            t = t.to(sample.device).float().expand(sample.shape[0])
            h = self.in_proj(sample) + self.time_proj(get_timestep_embedding(t, self.config.time_channels).to(sample.dtype))
            if encoder_hidden_states is not None:
                h = h + self.cond_proj(encoder_hidden_states.mean(1).to(sample.dtype))
            for block in self.blocks:
                h = h + block(torch.nn.functional.silu(h))
            out = self.out(torch.nn.functional.silu(h))
        return VectorDenoiserOutput(out) if return_dict else (out,)
