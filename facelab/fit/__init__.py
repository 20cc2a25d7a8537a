"""Latent-fit jobs: manifests and shards (`manifest`), done records and chunk checkpoints (`records`),
progress lines (`progress`) and the job loop (`job`). Pure Python and Hydra; Lightning objects are built
from config only."""
