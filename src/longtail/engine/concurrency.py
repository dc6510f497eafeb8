"""Several runs in one process (``longtail bench reproduce --concurrent N``).

Concurrent runs each train on their own CUDA stream, so their small kernels overlap on the GPU,
and each draws from its own generators (:class:`~longtail.engine.rng.RunRNG`), so their draws
neither interleave nor depend on thread timing. Two things are still shared, and this lock
serialises them; it covers only the enqueueing of work, which takes microseconds:

- weight initialisation, which draws from torch's global CPU generator
  (:meth:`RunRNG.initialising` seeds it from the run's stream and restores it);
- torch's default CUDA generator, which every CUDA graph registers at capture and advances at
  replay, and which refuses to be advanced by one thread while another thread is capturing: the
  training steps (capture, replay, eager steps; ops that take no generator, such as dropout, draw
  from it) hold the lock.
"""
import threading

DEVICE_RNG_LOCK = threading.RLock()
