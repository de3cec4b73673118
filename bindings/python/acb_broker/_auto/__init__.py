"""A folder agarun --mode auto puts first on PYTHONPATH: its sitecustomize turns on acb's
PyTorch auto mode in the program it runs, with no change to the program."""
