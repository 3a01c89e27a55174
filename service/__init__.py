"""Segmentation as a service and offline: image codecs, the inference pipeline, the HTTP app."""
