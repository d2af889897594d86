"""Intents: the compact notification messages, the rules that make them, and the bus they travel on."""
