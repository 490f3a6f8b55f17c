"""Train one (arm, seed), or a sweep with -m: `python train.py [-m] key=value ...`.

Examples (see experiments/README.md):
    python train.py data=tiny trainer=smoke
    python train.py -m arch=hybrid,stable_hybrid clip=none,agc 'seed=range(10)'
    python train.py -m +experiment=stage_a launcher=slurm
"""

from ptychostab.cli.train import main

if __name__ == "__main__":
    main()
