"""Float32 training of the precision study's networks, cached in the one cache.

    train(model, data, epochs=..)          Adam + cross-entropy, in place
    trained_model(name, data, seed=..)     build, train once, keep the weights (safetensors)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mdlcap import cache
from mdlcap.interventions.precision.data import ImageData
from mdlcap.interventions.precision.quantize import QuantNet, build_model


def train(model: QuantNet, data: ImageData, *, epochs: int, lr: float = 1e-3, batch_size: int = 64,
          seed: int = 0, device: str = "cpu", progress: bool = False) -> QuantNet:
    """Plain float32 training with Adam and cross-entropy (the proposal trains at fp32 first)."""
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(data.x_train, device=device)
    y = torch.as_tensor(data.y_train, device=device)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in tqdm(range(epochs), desc=f"train {model.name}", disable=not progress, leave=False):
        perm = torch.randperm(len(y), generator=g).to(device)
        for j in range(0, len(y), batch_size):
            idx = perm[j:j + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


def trained_model(name: str, data: ImageData, *, seed: int, epochs: int, lr: float, batch_size: int,
                  device: str = "cpu") -> QuantNet:
    """Train once and cache the weights (safetensors) in the one cache (namespace "precision")."""
    from safetensors.torch import load_file, save_file

    spec = {"kind": "weights", "model": name, "data": data.name, "n": len(data.y_train), "shape": data.shape,
            "seed": seed, "epochs": epochs, "lr": lr, "bs": batch_size, "y0": data.y_train[:32].tolist()}

    def fresh() -> QuantNet:
        torch.manual_seed(seed)
        return build_model(name, data.shape, data.n_classes)

    def compute() -> QuantNet:
        return train(fresh(), data, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, device=device)

    def dump(path, model) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(path))

    def load(path) -> QuantNet:
        model = fresh()
        model.load_state_dict(load_file(str(path)))
        return model.to(device).eval()

    return cache.cached("precision", spec, compute, load=load, dump=dump, suffix=".safetensors", prefix=f"{name}-")
