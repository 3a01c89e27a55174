"""Training and evaluation for CCNet: data sets, losses, the training loop, mIoU."""
