"""Helpers shared by several test folders (the headless-Chromium harness)."""
