"""The built-in batched, vectorised torch driving simulator (the default backend): ``envs.sim.world``."""
