"""ptychostab's submitit launchers (see launcher.py); discovered by Hydra's plugin scanner."""
