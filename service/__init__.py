"""The HTTP app: FastAPI factory, routes (/v1, /v2), settings, admission, batching, the model
registry, hot reload, metrics and the demo page. Segmentation itself is ``ccnet.inference``'s;
this package only serves it (``ccnet serve``)."""
