"""Engines tell a HookSession the step and the phase: the Lightning Trainer's callback (and more to come)."""
