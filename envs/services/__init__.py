"""Many simulator instances ("services") behind the one backend contract.

A service hosts a backend with some of the worlds, in a process of its own (``process.py``) or as a Ray
actor (``ray_service.py``); ``multi.py`` presents all of them as one :class:`~envs.api.Backend`, so the
GRPO rollout does not know how many there are. Snapshots move between services as bytes.
"""
