"""The console entry points, one thin Hydra app (or argparse tool) per module:

- `train.py`: facelab-train, facelab-eval, facelab-inpaint (the inpainting method)
- `fit.py`: facelab-fit (latent-fit jobs: Barbershop, DragGAN, the toy fit)
- `align.py`: facelab-align (FFHQ crops and paste-back)
- `convert.py`: facelab-convert (StyleGAN2 checkpoints between formats)
"""
