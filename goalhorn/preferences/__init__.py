"""Subscribers: users, their devices, and what they follow, kept in the compact Redis structures the
segmenter reads."""
