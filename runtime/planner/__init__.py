"""The planner: from a HardwareProfile and a ModelInfo to the fastest Plan that fits."""

from runtime.planner.plan import Plan
from runtime.planner.search import PlanError, candidates, plan_model, verify
from runtime.planner.speed import Calibration

__all__ = ["Calibration", "Plan", "PlanError", "candidates", "plan_model", "verify"]
