"""The planner: from a HardwareProfile and a ModelInfo to the fastest Plan that fits."""

from tandem.runtime.planner.plan import Plan
from tandem.runtime.planner.search import PlanError, candidates, plan_model, verify
from tandem.runtime.planner.speed import Calibration

__all__ = ["Calibration", "Plan", "PlanError", "candidates", "plan_model", "verify"]
