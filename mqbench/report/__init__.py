"""Leaderboards, rendered from stored records only."""
