"""Every key name a training bundle is read by, in the order it is probed (timm's ``_helpers`` way).

One home for the lists that extraction, training-state splitting, optimizer stripping and the
normalized writer share, so they cannot diverge.
"""

from __future__ import annotations

MODEL_KEYS = ("model_state_dict", "state_dict", "model", "net", "network", "module")
EMA_KEYS = ("state_dict_ema", "model_ema", "ema_state_dict", "ema")
OPTIMIZER_KEYS = ("optimizer_state_dict", "optimizer", "optimizer_states", "optim", "optimizers")
SCHEDULER_KEYS = ("scheduler_state_dict", "scheduler", "lr_scheduler", "lr_schedulers", "sched")
SCALER_KEYS = ("scaler_state_dict", "scaler", "grad_scaler", "amp_scaler")
TRAINING_STATE_KEYS = OPTIMIZER_KEYS + SCHEDULER_KEYS + SCALER_KEYS
NON_MODEL_KEYS = TRAINING_STATE_KEYS + ("amp", "loops", "callbacks")
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "_forward_module.")
