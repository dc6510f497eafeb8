"""Several runs in one process (``longtail bench reproduce --concurrent N``).

Concurrent runs each train on their own CUDA stream, so their small kernels overlap on the GPU.
They share torch's default CUDA generator, which refuses to be advanced by one thread while
another thread is capturing a CUDA graph. Every host-side action that touches the generator
(seeding, drawing an epoch's indices, eager steps, capture, graph replay) therefore holds this
lock; it covers only the enqueueing of work, which takes microseconds, not its execution.

Concurrent runs are statistically independent but not bitwise reproducible (the order in which
threads draw from the shared generator varies); run with ``--concurrent 1`` for that.
"""
import threading

DEVICE_RNG_LOCK = threading.RLock()
