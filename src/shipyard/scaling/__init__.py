"""Autoscaling: the pure policy and the actuator that applies it."""
