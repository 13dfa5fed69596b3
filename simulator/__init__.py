"""An Upbit-compatible exchange simulator: default upstream of the demo, tests and benchmarks."""

from simulator.app import Simulator
from simulator.control import ControlClient, ControlError
from simulator.server import SimulatorConfig

__all__ = ["ControlClient", "ControlError", "Simulator", "SimulatorConfig"]
