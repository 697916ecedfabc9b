"""Stage 2 of SAFS: hyperparameter optimisation of the training configuration.

``backends`` names the HPO libraries behind the ask/tell protocol (SMAC, Optuna, plugins),
``space`` reads HPO spaces (ConfigSpace YAML) and maps a configuration to training settings,
``smac`` and ``optuna`` wrap the libraries' own ask/tell. Importing this package imports
neither torch nor Ray, nor SMAC or Optuna (they load when a backend is created).
"""
