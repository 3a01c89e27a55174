"""Training and evaluation for CCNet: data sets, losses, the training loop, mIoU.

Modules (import what you need; this package imports nothing heavy by itself, so ``ccnet --help``
stays instant):

* ``training.datasets``  layout readers (folder, clips, Cityscapes, CamVid, ADE20K), up-front
  checks, torch datasets of frames and clip windows
* ``training.synth``     the deterministic synthetic scene / clip generator (``ccnet synth``)
* ``training.transforms`` augmentation and evaluation preprocessing (images and clips)
* ``training.losses``    cross-entropy, OHEM, auxiliary weighting, category-consistent loss
* ``training.loop``      ``train(config)``: SGD + poly LR, AMP, accumulation, DDP, checkpoints
* ``training.evaluate``  whole / sliding-window / multi-scale inference and scoring
* ``training.metrics``   the confusion matrix and its mIoU / IoU / pixel accuracy
* ``training.config``    ``TrainConfig`` and its YAML/JSON + command-line resolution

Library use::

    from training.config import TrainConfig
    from training.loop import train

    summary = train(TrainConfig(model="ccnet-tiny", data="data/synth", out="runs/tiny"))
"""

__all__: list[str] = []
