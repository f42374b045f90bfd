"""The small sublayer F the torch tests wrap in HyperConnections (an FFN, by default with its own
pre-norm, which saves its input u as attention and FFN blocks do)."""

import torch
from torch import nn


class PreNormFFN(nn.Module):
    def __init__(self, C, norm=True):
        super().__init__()
        self.norm = nn.RMSNorm(C) if norm else nn.Identity()
        self.up, self.down = nn.Linear(C, 2 * C), nn.Linear(2 * C, C)

    def forward(self, u):
        return self.down(torch.relu(self.up(self.norm(u))))
