"""Segmentation networks and the building blocks they share."""
