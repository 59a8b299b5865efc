"""Serve one backend's worlds over HTTP: the seed project's endpoints, batched and branching verbs, a live view.

    python serve.py                                  # the built-in simulator on http://127.0.0.1:8080
    python serve.py serve.port=8081 env.map=straight # another port, another world
    python serve.py env=carla serve.num_worlds=1     # one CARLA server and car (a CARLA install is required)
    GRPO_SERVE_TOKEN=secret python serve.py serve.host=0.0.0.0   # beyond this machine: a token is required

Then open http://127.0.0.1:8080/view (live bird's-eye view) or /docs (every endpoint), or train over it:
python train.py env=http env.urls=[http://127.0.0.1:8080]. envs/services/http_server.py has the details.
"""

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from envs.services.http_server import SERVER_PACKAGES, ServeConfig, serve
from envs.typed_config import ConfigError, from_dict


@hydra.main(version_base="1.3", config_path="conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    data = OmegaConf.to_container(cfg, resolve=True)
    try:
        config = from_dict(ServeConfig, data["serve"], "serve")
        serve(config, data["env"])
    except ConfigError as error:
        sys.exit(f"config error: {error}")
    except ModuleNotFoundError as error:
        if error.name not in SERVER_PACKAGES:
            raise
        sys.exit(f"serve.py needs {error.name}: pip install -e '.[serve]' (FastAPI and uvicorn)")


if __name__ == "__main__":
    main()
