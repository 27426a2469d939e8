"""ATOMICA checkpoints: `config.json` (the model's `get_config()`, with `model_type`) + a state-dict `.pt` file,
and our sidecar `atomica_ray.json` beside them.

load_atomica(config, weights, model_type=None, partial_finetune=False, **overrides)
  - configs of released and current ATOMICA and of atomica-ray: options we do not implement are dropped when
    off and refused, by name, when on (models/config_keys.py);
  - same class as the config's `model_type`: strict load (ATOMICA-Ligand, ATOMICA-Interface, our own runs);
  - another class: ATOMICA's transfer (`load_from_config_and_weights` -> `_load_from_pretrained`): the encoder
    comes from the checkpoint, heads absent from it start fresh (atomica-reference.md §2.7);
  - `partial_finetune` freezes everything but the task head.
save_atomica(model, out_dir) writes a config.json of ATOMICA's constructor keys only (its loader calls
`cls(**config)`), and the sidecar with our numerics flags (unk_is_global, attention_mask, direction_eps) and, when
they differ from ATOMICA's, a plain-words warning; `strict=True` refuses such a model instead.

Numerics flags come from config.json (configs we wrote before the sidecar existed), else the sidecar, else they
are ATOMICA's: a config without them was written by ATOMICA and keeps ATOMICA's numerics.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import torch
from e3nn import o3
from torch import nn

from .backbone import ATOMICA_BEHAVIOUR
from .config_keys import SIDECAR_NAME, clean_config, numerics_warning, split_config
from .registry import MODEL_CLASSES, build_model

log = logging.getLogger(__name__)

ENCODER_ARCH = ("atom_hidden_size", "block_hidden_size", "edge_size", "n_layers", "fragmentation_method")
# may differ between the checkpoint and the run that loads it (ATOMICA's create_model passes them on)
RUN_SETTINGS = ("k_neighbors", "dropout", "bottom_global_message_passing", "global_message_passing",
                "unk_is_global", "attention_mask", "direction_eps", "pred_dropout", "affinity_pred_dropout",
                "projector_dropout", "atom_weight", "translation_weight", "rotation_weight", "torsion_weight",
                "mask_weight")
CONFIG_NAME = "config.json"


# --- reading inputs ---------------------------------------------------------------------------------------------
def _read_config(config) -> tuple[dict, str]:
    if isinstance(config, dict):
        cfg, where = json.loads(json.dumps(config)), "config dict"
    else:
        where = str(config)
        try:
            with open(config) as f:
                cfg = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not valid JSON ({err})") from err
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        raise ValueError(f"{where}: an ATOMICA config needs a 'model_type' field")
    if cfg["model_type"] not in MODEL_CLASSES:
        raise ValueError(f"{where}: model_type {cfg['model_type']!r} is not one of {sorted(MODEL_CLASSES)}")
    if not isinstance(config, dict):
        sidecar = read_sidecar(Path(config).parent / SIDECAR_NAME)
        behaviour = (sidecar or {}).get("behaviour", {})
        inner = cfg["prot_model"] if cfg["model_type"] == "ProteinInterfaceModel" else cfg
        for key, value in behaviour.items():
            inner.setdefault(key, value)  # flags in config.json itself (older atomica-ray checkpoints) win
    return cfg, where


def config_behaviour(config) -> dict:
    """The numerics flags of a checkpoint config (path or dict): config.json, else the sidecar, else ATOMICA's."""
    cfg, _ = _read_config(config)
    if cfg["model_type"] == "ProteinInterfaceModel":
        cfg = cfg.get("prot_model") or {}
    return {k: cfg.get(k, v) for k, v in ATOMICA_BEHAVIOUR.items()}


def read_sidecar(path: Path) -> dict | None:
    """Our sidecar beside a config.json, or None."""
    if not path.is_file():
        return None
    try:
        with open(path) as f:
            sidecar = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(sidecar, dict) or not isinstance(sidecar.get("behaviour", {}), dict):
        raise ValueError(f"{path}: expected {{'behaviour': {{...}}}}")
    unknown = set(sidecar.get("behaviour", {})) - set(ATOMICA_BEHAVIOUR)
    if unknown:
        raise ValueError(f"{path}: unknown behaviour key(s) {sorted(unknown)}")
    return sidecar


def _read_weights(weights) -> tuple[dict, str]:
    if isinstance(weights, dict):
        state, where = weights, "state dict"
    else:
        where = str(weights)
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as err:  # pickled modules (ATOMICA's .ckpt) are refused by weights_only
            raise ValueError(f"{where}: not a plain state dict readable with weights_only=True ({err}); "
                             "ATOMICA's .ckpt files pickle the whole module: use its .pt weights file") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{where}: expected a state dict (parameter name -> tensor)")
    return state, where


# --- e3nn buffers ---------------------------------------------------------------------------------------------
def _tensor_products(model: nn.Module) -> dict[str, o3.TensorProduct]:
    return {name + ".": m for name, m in model.named_modules() if isinstance(m, o3.TensorProduct)}


def atomica_e3nn_buffers(tp: o3.TensorProduct) -> dict[str, torch.Tensor]:
    """The buffers e3nn 0.5 writes for a tensor product (the key set of ATOMICA's checkpoints), computed from the
    tensor product's instructions rather than read from whatever the installed e3nn registers."""
    out = {"weight": torch.zeros(0)}
    mask = []
    for i_out, (mul, ir) in enumerate(tp.irreps_out):
        used = any(ins.i_out == i_out and ins.path_weight != 0 and 0 not in ins.path_shape for ins in tp.instructions)
        mask.append(torch.full((mul * ir.dim,), 1.0 if used else 0.0))
    out["output_mask"] = torch.cat(mask) if mask else torch.ones(0)
    for ins in tp.instructions:
        if 0 in ins.path_shape:
            continue
        ls = (tp.irreps_in1[ins.i_in1].ir.l, tp.irreps_in2[ins.i_in2].ir.l, tp.irreps_out[ins.i_out].ir.l)
        if ins.connection_mode == "uvw" and 0 in ls:
            continue  # e3nn's specialised code for scalar paths uses no Wigner 3j
        if ins.connection_mode not in ("uvw", "uvuv"):
            raise NotImplementedError(f"connection mode {ins.connection_mode} does not occur in ATOMICA")
        out["_compiled_main_left_right._w3j_{}_{}_{}".format(*ls)] = o3.wigner_3j(*ls)
    return out


def _reconcile_e3nn(model: nn.Module, state: dict) -> dict:
    """Accept checkpoints whose e3nn constant buffers are named differently from the installed e3nn's: drop the
    file's constants the model does not have, keep the model's own for those the file lacks. Everything that is
    not an e3nn buffer still loads strictly."""
    expected = model.state_dict()
    prefixes = tuple(_tensor_products(model))
    if not prefixes:
        return state
    state = dict(state)
    for key in [k for k in state if k not in expected and k.startswith(prefixes)]:
        log.info("ignoring e3nn buffer %s absent from the installed e3nn", key)
        del state[key]
    buffers = {name for name, _ in model.named_buffers()}
    for key in expected:
        if key not in state and key.startswith(prefixes) and key in buffers:
            state[key] = expected[key]
    return state


def atomica_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with exactly ATOMICA's e3nn buffer keys, on CPU."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    buffers = {name for name, _ in model.named_buffers()}
    for prefix, tp in _tensor_products(model).items():
        canonical = {prefix + k: v for k, v in atomica_e3nn_buffers(tp).items()}
        for key in [k for k in state if k.startswith(prefix) and k in buffers and k not in canonical]:
            del state[key]
        for key, value in canonical.items():
            state.setdefault(key, value)
    return state


# --- building ---------------------------------------------------------------------------------------------------
def _merge_overrides(cfg: dict, overrides: dict, where: str) -> dict:
    """Same-class load: the checkpoint's architecture wins (as in ATOMICA); run settings may change; an
    architecture argument is taken from `overrides` only where the config leaves it empty. Defect flags absent
    from the config mean ATOMICA's behaviour."""
    cfg = {**_behaviour(cfg), **cfg}
    for key, value in overrides.items():
        if key in RUN_SETTINGS or cfg.get(key) is None:
            cfg[key] = value
        elif cfg[key] != value:
            log.warning("%s: keeping the checkpoint's %s=%r (ignoring %r)", where, key, cfg[key], value)
    return cfg


def _behaviour(source_cfg: dict) -> dict:
    return {k: source_cfg.get(k, v) for k, v in ATOMICA_BEHAVIOUR.items()}


def _transfer_kwargs(target: str, source_cfg: dict, overrides: dict) -> dict:
    """Constructor arguments of a `target` model fed by a checkpoint of another class."""
    kwargs = {k: source_cfg[k] for k in ENCODER_ARCH}
    for key in ("k_neighbors", "dropout", "bottom_global_message_passing", "global_message_passing"):
        kwargs[key] = source_cfg[key]
    kwargs.update(_behaviour(source_cfg))
    kwargs.update(overrides)
    if target == "DenoisePretrainModel" and "modality_embedding" not in kwargs:
        kwargs["modality_embedding"] = bool(source_cfg.get("modality_embedding", False))
    return kwargs


def _encoder_source(source: str, cfg: dict, state: dict, where: str) -> tuple[dict, dict]:
    """(encoder config, state dict) of a `source`-class checkpoint; for ProteinInterfaceModel its protein
    encoder."""
    if source == "ProteinInterfaceModel":
        sub = {k[len("prot_model."):]: v for k, v in state.items() if k.startswith("prot_model.")}
        if "prot_model" not in cfg or not sub:
            raise ValueError(f"{where}: a ProteinInterfaceModel checkpoint needs 'prot_model' config and weights")
        return cfg["prot_model"], sub
    missing = [k for k in ENCODER_ARCH + ("k_neighbors",) if k not in cfg]
    if missing:
        raise ValueError(f"{where}: config lacks {missing}")
    return cfg, state


def _load_encoder_weights(model: nn.Module, state: dict, where: str) -> None:
    """Copy every tensor the model shares with `state` (ATOMICA's `load_state_dict(strict=False)`); heads and
    other modules the checkpoint lacks keep their fresh initialisation."""
    expected = model.state_dict()
    state = _reconcile_e3nn(model, state)
    shared = {k: v for k, v in state.items() if k in expected}
    for key, value in shared.items():
        if value.shape != expected[key].shape:
            raise ValueError(f"{where}: {key} has shape {tuple(value.shape)}, the model expects "
                             f"{tuple(expected[key].shape)}")
    model.load_state_dict(shared, strict=False)
    fresh = sorted({k.split(".")[0] for k in expected if k not in shared})
    if fresh:
        log.info("%s: initialised fresh (not in the checkpoint): %s", where, ", ".join(fresh))


def freeze_all_but_head(model: nn.Module, also_train: tuple[str, ...] = ()) -> None:
    """Partial fine-tuning: only the task head (and `also_train` modules) keep gradients."""
    inner = model.cmplx_model if hasattr(model, "cmplx_model") else None
    model.requires_grad_(False)
    for name in tuple(getattr(model, "head_modules", ())) + tuple(also_train):
        module = getattr(model, name, None)
        if module is not None:
            module.requires_grad_(True)
    if inner is not None:
        inner.requires_grad_(False)


def load_atomica(config, weights, model_type: str | None = None, partial_finetune: bool = False, **overrides):
    """A model from an ATOMICA config (path or dict) and weights (path or state dict); see the module docstring.

    `overrides` are constructor arguments: the new head's arguments on a transfer, run settings (k_neighbors,
    dropout, global message passing, the defect flags) otherwise."""
    cfg, cfg_where = _read_config(config)
    state, weights_where = _read_weights(weights)
    source = cfg.pop("model_type")
    if source == "ProteinInterfaceModel":
        inner = dict(cfg.get("prot_model") or {})
        inner.pop("model_type", None)
        cfg["prot_model"] = clean_config(inner, "PredictionModel", cfg_where)
    else:
        cfg = clean_config(cfg, source, cfg_where)
    target = model_type or source
    if target not in MODEL_CLASSES:
        raise ValueError(f"model_type {target!r} is not one of {sorted(MODEL_CLASSES)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}

    if target == source:
        if target == "ProteinInterfaceModel":
            kwargs = _merge_overrides(dict(cfg["prot_model"]), overrides, cfg_where)
        else:
            kwargs = _merge_overrides(cfg, overrides, cfg_where)
        model = build_model(target, kwargs)
        try:
            model.load_state_dict(_reconcile_e3nn(model, state), strict=True)
        except RuntimeError as err:
            detail = " ".join(str(err).split())
            raise ValueError(f"{weights_where}: does not match {target} built from {cfg_where}: {detail}") from err
        if partial_finetune:
            freeze_all_but_head(model)
        return model

    src_cfg, src_state = _encoder_source(source, cfg, state, cfg_where)
    encoder_type = "PredictionModel" if target == "ProteinInterfaceModel" else target
    kwargs = _transfer_kwargs(encoder_type, src_cfg, overrides)
    model = build_model(encoder_type, kwargs)
    _load_encoder_weights(model, src_state, weights_where)
    also_train = []
    # ATOMICA: an edge-type embedding never trained on global edges stays trainable when they are switched on
    if not src_cfg.get("global_message_passing") and model.global_message_passing:
        also_train.append("edge_embedding_top")
    if not src_cfg.get("bottom_global_message_passing") and model.bottom_global_message_passing:
        also_train.append("edge_embedding_bottom")
    if partial_finetune:
        freeze_all_but_head(model, tuple(also_train))
    for name in getattr(model, "frozen_modules", ()):
        getattr(model, name).requires_grad_(False)
    if target == "ProteinInterfaceModel":
        model = MODEL_CLASSES[target](model)
    return model


def model_behaviour(model: nn.Module) -> dict:
    """The numerics flags a model runs with (of its protein encoder for ProteinInterfaceModel)."""
    encoder = model.prot_model if hasattr(model, "prot_model") else model
    return {k: getattr(encoder, k) for k in ATOMICA_BEHAVIOUR}


def atomica_config(model: nn.Module) -> tuple[dict, dict]:
    """(config.json content: ATOMICA's constructor keys only, our keys) of a model."""
    config = model.get_config()
    if config["model_type"] == "ProteinInterfaceModel":
        inner, ours = split_config(config["prot_model"])
        return {**config, "prot_model": inner}, ours
    return split_config(config)


def save_atomica(model: nn.Module, out_dir, *, epoch: int | None = None, step: int | None = None,
                 overwrite: bool = False, strict: bool = False) -> tuple[Path, Path]:
    """Write `config.json`, the weights (ATOMICA's trainer names them `epoch{E}_step{S}.pt`; `model.pt` when no
    epoch / step is given) and the sidecar. Files are written whole (temporary file, then rename); existing files
    are kept unless `overwrite` (an identical config.json is fine). `strict`: refuse (ValueError, nothing written)
    a model whose numerics ATOMICA's code does not have. Returns (config path, weights path)."""
    out = Path(out_dir)
    config, _ = atomica_config(model)
    behaviour = model_behaviour(model)
    warning = numerics_warning(behaviour)
    if strict and warning:
        raise ValueError("atomica_strict: refusing to write an ATOMICA checkpoint. " + warning)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / CONFIG_NAME
    weights_path = out / (f"epoch{epoch}_step{step}.pt" if epoch is not None and step is not None else "model.pt")
    config_text = json.dumps(config, indent=4)
    sidecar = {"format": "atomica-ray-model-sidecar", "version": 1, "model_type": config["model_type"],
               "behaviour": behaviour, "atomica_numerics": warning is None, "warning": warning}
    if not overwrite:
        if weights_path.exists():
            raise FileExistsError(f"{weights_path} exists; pass overwrite=True to replace it")
        if config_path.exists() and (config_path.read_text() != config_text
                                     or (read_sidecar(out / SIDECAR_NAME) or {}).get("behaviour") != behaviour):
            raise FileExistsError(f"{config_path} exists with another configuration; pass overwrite=True")

    def write(path: Path, dump) -> None:
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                dump(f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    write(weights_path, lambda f: torch.save(atomica_state_dict(model), f))
    write(out / SIDECAR_NAME, lambda f: f.write(json.dumps(sidecar, indent=1).encode()))
    write(config_path, lambda f: f.write(config_text.encode()))
    return config_path, weights_path
