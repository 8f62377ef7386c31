"""lcnn_lab: the helper package behind the lcnn-lab book on lightweight CNNs and model compression.

    import lcnn_lab as lab
    model = lab.models.create_model("cifar_net", kernel_size=5, groups=4)
    print(lab.profile.profile(model))
"""
__version__ = "0.1.0"

from . import (classroom, config, data, deepcompress, distill, exercises, families, features, imagenet,  # noqa: E402,F401
               layers, lowrank, models, nas, profile, prune, quant, render, reparam, results, runtime, train, trained,
               units,
               widgets)
