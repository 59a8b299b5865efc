"""Traffic-light state codes shared by every driving backend (the simulator's light schedule, CARLA's lights,
the observation's one-hot)."""

GREEN, YELLOW, RED = 0, 1, 2
