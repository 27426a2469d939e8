"""Which numerics a training run's checkpoints will carry, known on the driver before anything starts.

A fresh model uses atomica-ray's fixes (models/backbone.py) unless `atomica_numerics`; a fine-tuned one inherits
the flags of its pretrained config (ATOMICA's, for ATOMICA's checkpoints) unless `atomica_numerics`. The CLI
prints the warning that goes with non-ATOMICA numerics and refuses the run under `atomica_strict`.
"""

from __future__ import annotations

from atomica_ray.train.config import TrainConfig


def run_behaviour(cfg: TrainConfig) -> dict:
    from atomica_ray.models.backbone import ATOMICA_BEHAVIOUR, FIXED_BEHAVIOUR
    from atomica_ray.models.checkpoint import config_behaviour

    if cfg.atomica_numerics:
        return dict(ATOMICA_BEHAVIOUR)
    if cfg.pretrain_config:
        return config_behaviour(cfg.pretrain_config)
    return dict(FIXED_BEHAVIOUR)


def atomica_numerics_warning(cfg: TrainConfig) -> str | None:
    from atomica_ray.models.config_keys import numerics_warning

    return numerics_warning(run_behaviour(cfg))
