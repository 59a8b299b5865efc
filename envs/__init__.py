"""Driving backends behind one contract (envs.api): the built-in batched simulator and CARLA."""
