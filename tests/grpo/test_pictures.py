"""Pictures for people through the backend's picture capabilities: the group picture, GIF frames and the GIF
writer; a backend without pictures is refused by name."""

import numpy as np
import pytest
import torch
from PIL import Image

from envs.api import NotOffered
from grpo.pictures import CAPTION_HEIGHT, GIF_SIZE, branch_colours, gif_frame, group_picture, write_gif


@pytest.fixture
def sim(straight_sim):
    sim = straight_sim(2)
    sim.reset(0)
    return sim


def test_the_group_picture_draws_every_branch_with_its_colour_and_a_legend(sim):
    start = sim.positions([0])[0]
    paths = torch.stack([start + torch.tensor([[2.0 * step, 1.5 * branch] for branch in range(3)])
                         for step in range(6)])  # [H + 1, G, 2]: three parallel branches
    image = group_picture(sim, paths, torch.tensor([1.0, 3.0, 2.0]), size=160, metres=40.0)
    assert image.shape == (160, 160 + 150, 3) and image.dtype == np.uint8
    for colour in branch_colours(3):
        assert (np.abs(image[:, :160].astype(int) - colour).sum(-1) < 60).any()  # each branch on the map
        assert (image[:, 160:] == np.array(colour, np.uint8)).all(-1).any()  # and in the legend


def test_a_gif_frame_is_the_birdseye_view_under_a_caption(sim):
    frame = gif_frame(sim, 1, seed=7, seconds=1.2, speed=3.4, completion=50.0)
    assert frame.shape == (GIF_SIZE + CAPTION_HEIGHT, GIF_SIZE, 3)
    assert np.array_equal(frame[CAPTION_HEIGHT:], sim.render_birdseye(1, size=GIF_SIZE, metres=60.0))
    assert frame[:CAPTION_HEIGHT].max() > 200  # the caption's text


def test_a_backend_without_pictures_is_refused_by_name():
    from envs.gym_backend import GymBackend, GymConfig

    backend = GymBackend(GymConfig())
    with pytest.raises(NotOffered, match="GymBackend \\(gym\\) does not offer render_birdseye"):
        gif_frame(backend, 0, seed=0, seconds=0.0, speed=0.0)
    backend.close()


def test_gif_round_trip(sim, tmp_path):
    frames = []
    for _ in range(4):
        sim.state.x[0] += 3.0  # move the ego so every frame differs (Pillow merges identical frames)
        frames.append(sim.render_birdseye(0, size=64, metres=40.0))
    path = write_gif(frames, tmp_path / "nested" / "episode.gif", fps=5)
    assert path.exists()
    with Image.open(path) as gif:
        assert gif.n_frames == 4
        assert gif.info["loop"] == 0
        assert gif.info["duration"] == 200
        assert gif.size == (64, 64)


def test_gif_needs_frames_of_one_shape(tmp_path):
    with pytest.raises(ValueError, match="at least one frame"):
        write_gif([], tmp_path / "empty.gif")
    with pytest.raises(ValueError, match="shape"):
        write_gif([np.zeros((8, 8, 3), np.uint8), np.zeros((9, 8, 3), np.uint8)], tmp_path / "bad.gif")
