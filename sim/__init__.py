"""Closed-loop simulation."""
