"""Tiny non-diffusers DiTs for the BlockAdapter tests: one block class per ForwardPattern.

Deterministic blocks (`PatternBlock*`) change their streams smoothly with the timestep, so
DBCache reuses some steps and computes others; `RandomBlock*` follow cache-dit's own API tests
(a block either scales its streams or replaces them with noise) for mechanics over many steps.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

DIM = 16
PATTERNS = ["Pattern_0", "Pattern_1", "Pattern_2", "Pattern_3", "Pattern_4", "Pattern_5"]
TAKES_ENCODER = {"Pattern_0", "Pattern_1", "Pattern_2"}
H_FIRST = {"Pattern_0", "Pattern_4"}  # (hidden, encoder); Pattern_1/5 return (encoder, hidden)


class _Smooth(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.Linear(DIM, DIM)
        self.ctx = nn.Linear(DIM, DIM)
        self.mod = nn.Linear(DIM, DIM)

    def hidden(self, h: torch.Tensor, temb: torch.Tensor, e: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = h + temb if e is None else h + temb + e.mean(dim=1, keepdim=True)
        return h + 0.3 * torch.tanh(self.attn(x)) * torch.sigmoid(self.mod(temb))

    def encoder(self, e: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return e + 0.3 * torch.tanh(self.ctx(e + temb))


class PatternBlock0(_Smooth):
    def forward(self, hidden_states, encoder_hidden_states, temb):
        return self.hidden(hidden_states, temb, encoder_hidden_states), self.encoder(encoder_hidden_states, temb)


class PatternBlock1(_Smooth):
    def forward(self, hidden_states, encoder_hidden_states, temb):
        return self.encoder(encoder_hidden_states, temb), self.hidden(hidden_states, temb, encoder_hidden_states)


class PatternBlock2(_Smooth):
    def forward(self, hidden_states, encoder_hidden_states, temb):
        return self.hidden(hidden_states, temb, encoder_hidden_states)


class PatternBlock3(_Smooth):
    def forward(self, hidden_states, temb):
        return self.hidden(hidden_states, temb)


class PatternBlock4(_Smooth):
    def forward(self, hidden_states, temb):
        h = self.hidden(hidden_states, temb)
        return h, self.encoder(h, temb)


class PatternBlock5(_Smooth):
    def forward(self, hidden_states, temb):
        h = self.hidden(hidden_states, temb)
        return self.encoder(h, temb), h


SMOOTH_BLOCKS = {f"Pattern_{i}": cls for i, cls in enumerate(
    [PatternBlock0, PatternBlock1, PatternBlock2, PatternBlock3, PatternBlock4, PatternBlock5])}


def unpack(pattern: str, out, h, e):
    """(hidden, encoder) after a block of `pattern` returned `out`."""
    if isinstance(out, torch.Tensor):
        return out, e
    return out if pattern in H_FIRST else (out[1], out[0])


class TinyDiT(nn.Module):
    """A DiT with one block list (`blocks`) of one pattern; calls its blocks as the pattern says."""

    def __init__(self, pattern: str, num_blocks: int = 6, seed: int = 0, random_blocks: bool = False) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.pattern = pattern
        self.t_embed = nn.Linear(1, DIM)
        make = (lambda: RandomBlock(pattern)) if random_blocks else SMOOTH_BLOCKS[pattern]
        self.blocks = nn.ModuleList([make() for _ in range(num_blocks)])
        self.proj_out = nn.Linear(DIM, DIM)

    def forward(self, hidden_states, encoder_hidden_states=None, timestep=None):
        t = timestep if timestep is not None else torch.zeros(hidden_states.shape[0])
        temb = self.t_embed(t.reshape(-1, 1).float() / 1000)[:, None, :]
        h, e = hidden_states, encoder_hidden_states
        for block in self.blocks:
            out = block(h, e, temb) if self.pattern in TAKES_ENCODER else block(h, temb)
            h, e = unpack(self.pattern, out, h, e)
        out = self.proj_out(h)
        return out if e is None else out + e.mean(dim=1, keepdim=True)


class TwoListDiT(nn.Module):
    """FLUX-like: double-stream blocks (Pattern_0), then single-stream blocks (Pattern_3) on [text, image]."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.t_embed = nn.Linear(1, DIM)
        self.double_blocks = nn.ModuleList([PatternBlock0() for _ in range(4)])
        self.single_blocks = nn.ModuleList([PatternBlock3() for _ in range(5)])
        self.proj_out = nn.Linear(DIM, DIM)

    def forward(self, hidden_states, encoder_hidden_states, timestep):
        temb = self.t_embed(timestep.reshape(-1, 1).float() / 1000)[:, None, :]
        h, e = hidden_states, encoder_hidden_states
        for block in self.double_blocks:
            h, e = block(h, e, temb)
        x = torch.cat([e, h], dim=1)
        for block in self.single_blocks:
            x = block(x, temb)
        return self.proj_out(x[:, e.shape[1]:])


class RandomBlock(nn.Module):
    """cache-dit's test block: scale the streams by 0.7, or (half the time) replace them with noise.
    Its forward names only `hidden_states` (the pattern is declared, not checked)."""

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = pattern
        self.calls = 0  # times the block really ran

    @staticmethod
    def _step(x: torch.Tensor) -> torch.Tensor:
        return torch.randn_like(x) if torch.rand(1).item() < 0.5 else x * 0.7

    def forward(self, hidden_states, *args, **kwargs):
        self.calls += 1
        h = self._step(hidden_states)
        e = self._step(args[0] if self.pattern in TAKES_ENCODER else h)
        if self.pattern in ("Pattern_2", "Pattern_3"):
            return h
        return (h, e) if self.pattern in H_FIRST else (e, h)


def inputs(pattern: Optional[str], batch: int = 2, tokens: int = 8, text: int = 4, seed: int = 0):
    """Latents and (for patterns that take one) an encoder stream."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, tokens, DIM, generator=g)
    e = torch.randn(batch, text, DIM, generator=g)
    return x, (e if pattern is None or pattern in TAKES_ENCODER else None)


def sample(model, pattern: Optional[str], steps: int = 28, timesteps: bool = True, seed: int = 0) -> torch.Tensor:
    """Euler loop over `steps` (timesteps 1000 -> 0; `timesteps=False` calls the model without one)."""
    x, e = inputs(pattern, seed=seed)
    ts = torch.linspace(1000, 0, steps + 1)
    with torch.no_grad():
        for i in range(steps):
            t = ts[i].expand(x.shape[0]) if timesteps else None
            v = model(x, encoder_hidden_states=e, timestep=t)
            x = x + (ts[i + 1] - ts[i]) / 1000 * v
    return x


def sample_cfg(model, pattern: str, steps: int = 28, scale: float = 3.0) -> torch.Tensor:
    """Euler loop with separate cond / uncond calls per step (true CFG, the uncond text all zeros)."""
    x, e = inputs(pattern)
    ts = torch.linspace(1000, 0, steps + 1)
    with torch.no_grad():
        for i in range(steps):
            t = ts[i].expand(x.shape[0])
            cond = model(x, encoder_hidden_states=e, timestep=t)
            uncond = model(x, encoder_hidden_states=torch.zeros_like(e), timestep=t)
            x = x + (ts[i + 1] - ts[i]) / 1000 * (uncond + scale * (cond - uncond))
    return x


class LoopPipeline:
    """A pipeline that is not a torch module: each call is one generation of `num_inference_steps`,
    calling its transformer(s) without a timestep (a second transformer takes the second half)."""

    def __init__(self, transformer: nn.Module, transformer_2: Optional[nn.Module] = None, pattern: str = "Pattern_2"):
        self.transformer = transformer
        self.transformer_2 = transformer_2
        self.pattern = pattern

    def __call__(self, num_inference_steps: int = 10) -> torch.Tensor:
        x, e = inputs(self.pattern)
        with torch.no_grad():
            for i in range(num_inference_steps):
                model = self.transformer_2 if self.transformer_2 is not None and 2 * i >= num_inference_steps else self.transformer
                x = x - 0.05 * model(x, encoder_hidden_states=e)
        return x
