"""Training and evaluation for CCNet: data sets, losses, the training loop, mIoU.

Modules (import what you need; this package imports nothing heavy by itself, so ``ccnet --help``
stays instant):

* ``training.datasets``  layout readers (folder, clips, Cityscapes, CamVid, ADE20K), up-front
  checks, torch datasets of frames and clip windows
* ``training.synth``     the deterministic synthetic scene / clip generator (``ccnet synth``)
* ``training.transforms`` augmentation and evaluation preprocessing (images and clips)
* ``training.losses``    cross-entropy, OHEM, auxiliary weighting, category-consistent loss
* ``training.loop``      ``train(config)``: the steps, validation, checkpoints, stopping
* ``training.config``    ``TrainConfig``, its YAML/JSON + command-line resolution, and the
  factories that turn settings into transforms, data sets, samplers and losses
* ``training.optim``     parameter groups, SGD and the poly schedule (``training.schedule``)
* ``training.run_state`` what a resumable checkpoint restores (``training.state``: the files)
* ``training.interrupt`` SIGTERM / SIGINT: checkpoint the step, then stop
* ``training.evaluate``  whole / sliding-window / multi-scale inference, the prediction
  iterator, scoring (overall and by group)
* ``training.metrics``   the confusion matrix and its mIoU / IoU / pixel accuracy
* ``training.report``    ``ccnet evaluate --report``: confusion-matrix and IoU charts + JSON
* ``training.overlays``  validation pictures (input | truth | prediction) for TensorBoard

Library use::

    from ccnet.training.config import TrainConfig
    from ccnet.training.loop import train

    summary = train(TrainConfig(model="ccnet-tiny", data="data/synth", out="runs/tiny"))
"""

__all__: list[str] = []
