"""Classic ImageNet networks from torchvision, measured the way this book measures its own models.

The surveys open with tables of famous networks: their parameters, storage and operation counts
(long2024 Table 1, li2023 Table 1). :func:`imagenet_stats` rebuilds each network from torchvision's
constructors (random weights: no download is needed to count) and measures it with
:mod:`lcnn_lab.profile`. torchvision's weight metadata adds what only a trained model knows: its
ImageNet top-1 accuracy, the size of its checkpoint file and torchvision's own operation count.

Counting a large network at a large input takes seconds, so results are kept in the results store.
"""
from __future__ import annotations

import torch
import torchvision

from . import profile
from .results import ResultsStore, make_key


def imagenet_stats(name: str, input_size: int = 224, store: ResultsStore | None = None) -> dict:
    """Parameters, MACs at ``input_size``×``input_size``, float32 size, and torchvision's metadata.

    Returns a dict with ``params``, ``macs``, ``flops`` (= 2 × MACs), ``size_mb`` (params × 4 bytes,
    in 10^6 bytes), ``size_mib`` (in 2^20 bytes), ``file_mb`` (torchvision's checkpoint file),
    ``tv_ops_g`` (torchvision's "GFLOPS" figure, at its own input size), ``tv_input`` (that size),
    ``top1`` and ``top5`` (ImageNet-1K validation accuracy of torchvision's default weights),
    ``top1_v1`` (of its first weights, ``IMAGENET1K_V1``: the original paper's training recipe;
    later versions were retrained with modern tricks and score higher), and
    ``uncounted`` (operators fvcore could not count; empty when every operator was handled).
    """
    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except ValueError:
        raise ValueError(f"torchvision has no model called {name!r}; "
                         f"see torchvision.models.list_models()") from None
    store = store if store is not None else ResultsStore()
    key = make_key("imagenet", model=name, input_size=input_size, torchvision=torchvision.__version__)

    def measure() -> tuple[dict, dict]:
        # aux_logits off: the auxiliary classifiers of GoogLeNet/Inception only run in training
        kwargs = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
        with torch.random.fork_rng():
            model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
        macs = profile.count_macs(model, (1, 3, input_size, input_size))
        meta = weights.meta
        params = profile.count_params(model)
        crop = getattr(weights.transforms(), "crop_size", [None])[0]
        v1 = getattr(torchvision.models.get_model_weights(name), "IMAGENET1K_V1", weights)
        return ({"params": params, "macs": macs.total, "flops": macs.flops,
                 "size_mb": params * 4 / 1e6, "size_mib": params * 4 / 2**20,
                 "file_mb": meta.get("_file_size"), "tv_ops_g": meta.get("_ops"), "tv_input": crop,
                 "top1": meta["_metrics"]["ImageNet-1K"]["acc@1"],
                 "top5": meta["_metrics"]["ImageNet-1K"]["acc@5"],
                 "top1_v1": v1.meta["_metrics"]["ImageNet-1K"]["acc@1"],
                 "uncounted": dict(macs.uncounted)},
                {"weights": str(weights), "torch": str(torch.__version__)})

    return store.get_or_compute(key, measure)["metrics"]
