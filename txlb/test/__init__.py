"""test package."""
