"""lcnn_lab: the helper package behind the lcnn-lab book on lightweight CNNs and model compression.

    import lcnn_lab as lab
    model = lab.models.create_model("cifar_net", kernel_size=5, groups=4)
    print(lab.profile.profile(model))
"""
__version__ = "0.1.0"

from . import (config, data, exercises, families, features, imagenet, layers, models, profile, prune, quant,  # noqa: E402,F401
               render, reparam, results, train, trained, units, widgets)
