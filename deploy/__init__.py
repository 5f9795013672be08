"""Deployment tooling that runs outside the functions: traffic rollouts for Knative Services."""
