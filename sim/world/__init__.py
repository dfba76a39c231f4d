"""The synthetic driving world (see world_api): seeded maps, the ego, traffic, the scripted expert."""

from .expert import Expert
from .navigator import COMMAND_PHRASES
from .raster import GroundMap
from .scenario import Scenario, make_scenario
from .vehicle import VehicleState
from .world import World

__all__ = ["COMMAND_PHRASES", "Expert", "GroundMap", "Scenario", "VehicleState", "World", "make_scenario"]
