"""Which numeric precision a model runs in on this machine, decided by a parity gate.

* ``capabilities``: what the CPU multiplies natively (AMX, AVX512-BF16, VNNI), from cpuinfo;
* ``gate``: the gate's data (real photographs, the model's own validation scenes) and its
  measurement (argmax agreement, mIoU drop, speed-up, timed interleaved with fp32);
* ``policy``: what is offered here and the decision from measured figures (no measuring);
* ``cache``: figures kept between starts, keyed by model file, backend and CPU;
* ``select``: the glue that gates a loaded backend and switches it.
"""
