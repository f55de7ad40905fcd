"""Adapters from concernet_ode to third-party stacks, one module each."""
