"""Integrations of bnwd with training frameworks, each an optional extra imported on demand.

- `bnwd.integrations.lightning.BnwdMonitor`: a Lightning callback that attaches a `bnwd.Monitor`
  to the trainer's optimizer, logs its samples through the trainer's loggers and optionally
  audits which parameters' weight decay only sets an effective learning rate
  (``pip install 'bnwd[lightning]'``).

Nothing is imported here, so ``import bnwd.integrations`` never needs a framework installed.
"""
