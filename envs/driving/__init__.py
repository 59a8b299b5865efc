"""What every driving backend shares: the observation layout's builders, the reward and vehicle limits, the
traffic-light codes, and the rule-based expert over the observation. The built-in simulator (envs/sim) and
CARLA (envs/carla) both import this package and never each other."""
