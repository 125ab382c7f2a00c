# The two commands a new user runs: `make demo` and `make test`. Both set up first.
VENV ?= .venv
PY := $(VENV)/bin/python
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export MUJOCO_GL := osmesa
export PYOPENGL_PLATFORM := osmesa
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup test demo lint format bench colcon clean

setup:
	bash scripts/setup.sh

test: setup
	$(PY) -m pytest -q -ra --durations=15 $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/wmpo demo $(DEMO_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

colcon: setup
	cd ros2_ws && ../$(VENV)/bin/colcon build --symlink-install

clean:
	rm -rf ros2_ws/build ros2_ws/install ros2_ws/log .pytest_cache
