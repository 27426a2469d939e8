"""Probes on frozen embeddings (ATOMICA's `probe/` protocol) as Ray Tune trials: `atomica-ray probe`.

    features.py   the representation column of `atomica-ray embed`'s Parquet, the labels joined by item id,
                  a train-fit standardizer
    head.py       the probe: linear (logistic regression) or a small MLP
    training.py   one (setting, seed): Adam on the train split, early stopping on the validation metric
    stats.py      seed mean and 95% interval, bootstrap and cluster-bootstrap intervals, paired tests
    sweep.py      settings x seeds as Tune trials; seed-averaged metrics and seed-ensemble intervals per setting
"""
