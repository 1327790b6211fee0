"""The commands' entry logic (train, evaluate, collect): wiring only, no algorithms.

Each job validates its whole config (task, encoder, policy, training) before any long step and answers a
user error with one line and exit status 2 (``HYDRA_FULL_ERROR=1`` shows the traceback).
"""
