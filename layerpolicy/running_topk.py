"""The k most likely entries of each row of logits, kept while vocabulary blocks stream by."""

from __future__ import annotations

import torch


class RunningTopK:
    """The k largest logits of each of n rows and their vocabulary ids, merged block by block
    (never more than [n, k + w] values alive)."""

    def __init__(self, n: int, k: int, device: torch.device):
        self.k = k
        self.values = torch.empty(n, 0, device=device)
        self.ids = torch.empty(n, 0, dtype=torch.long, device=device)

    def update(self, z: torch.Tensor, start: int) -> None:
        """Merge block z [n, w], whose first column is vocabulary entry `start`."""
        values, ids = z.topk(min(self.k, z.shape[1]), dim=-1)
        values = torch.cat([self.values, values], dim=-1)
        ids = torch.cat([self.ids, ids + start], dim=-1)
        if self.ids.shape[1]:
            values, keep = values.topk(min(self.k, values.shape[1]), dim=-1)
            ids = ids.gather(-1, keep)
        self.values, self.ids = values, ids
