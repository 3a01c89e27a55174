"""Live video sessions (``WS /v1/stream``): limits, the session loop, the table of sessions.

The route (``service.api.routes.stream``) checks the handshake and hands the socket to a
``LiveSession``; ``SessionHub`` owns what sessions share (the cap, the worker threads, the
metrics, SIGTERM). The model work is ``ccnet.inference.stream.StreamSegmenter``.
"""
